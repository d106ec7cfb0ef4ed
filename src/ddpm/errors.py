"""The one exception type for user mistakes.

The CLI prints a ``UserError`` as a single ``error: ...`` line and exits with status 2, with no
traceback. Its message names the bad value and what to do about it. Library callers can catch it
as a ``ValueError``.
"""


class UserError(ValueError):
    """Bad input from the user: a missing file, a wrong flag, data that cannot be read."""
