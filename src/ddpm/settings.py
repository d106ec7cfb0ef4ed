"""Settings dataclasses whose fields carry their command-line flag: ``option(help, default=...)``.

``ddpm train``'s :class:`~ddpm.train.TrainConfig` and ``ddpm eval``'s :class:`~ddpm.evaluation.evaluate.EvalSettings`
declare each setting once, with its help text and marks in the field's metadata; :mod:`ddpm.cli.flags` turns the
fields into flags. Keys a field may carry:

- ``help``: the flag's help text;
- ``cli``: False for a field with no flag of its own;
- ``metavar``, ``choices``: as in argparse;
- ``resume``: True when a resumed training run must keep the value (it changes the run's numbers);
- ``before_flag``: the value a checkpoint that predates the field was trained with, where that differs from
  today's default.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, field
from typing import Any


def option(help: str, *, default: Any = MISSING, default_factory: Any = MISSING, **marks: Any) -> Any:
    """A dataclass field with ``help`` and ``marks`` (see the module docstring) in its metadata."""
    kw: dict[str, Any] = {"metadata": {"help": help, **marks}}
    if default is not MISSING:
        kw["default"] = default
    if default_factory is not MISSING:
        kw["default_factory"] = default_factory
    return field(**kw)


def marked(fields: tuple[Field, ...], mark: str) -> tuple[str, ...]:
    """The names of the fields whose metadata sets ``mark`` to a true value, in declaration order."""
    return tuple(f.name for f in fields if f.metadata.get(mark))
