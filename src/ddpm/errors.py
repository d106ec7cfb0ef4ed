"""The exception types for user mistakes.

The CLI prints a ``UserError`` as a single ``error: ...`` line and exits with status 2, with no
traceback. Its message names the bad value and what to do about it. Library callers can catch it
as a ``ValueError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user: a missing file, a wrong flag, data that cannot be read."""


class ParameterError(UserError):
    """A ``UserError`` about named parameters of a library function.

    The message template writes each parameter as ``{name}``: ``str(error)`` shows the plain names
    ("steps must lie in 1..1000 ..."), and a front end shows its own names with :meth:`render`
    (the CLI: "--steps must lie in 1..1000 ...").
    """

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.render(lambda name: name))

    def render(self, rename: Callable[[str], str]) -> str:
        """The message with every ``{name}`` replaced by ``rename(name)``."""
        return re.sub(r"\{(\w+)\}", lambda m: rename(m[1]), self.template)


def check_at_least(name: str, value: int, least: int, why: str = "") -> None:
    """Raise a ParameterError naming parameter ``name`` unless ``value >= least``."""
    if value < least:
        raise ParameterError(f"{{{name}}} must be at least {least}{why}; got {value}")
