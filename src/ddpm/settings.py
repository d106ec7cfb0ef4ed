"""Settings dataclasses whose fields carry their command-line flag: ``option(help, default=...)``.

Every command's settings are declared once, as dataclass fields with their help text and marks in the field's
metadata (``ddpm train``'s :class:`~ddpm.train.TrainConfig`, the sampling flags of ``sample``, ``edit`` and
``eval`` in :class:`~ddpm.sampler_choice.SampleSettings`, ...); :mod:`ddpm.cli.flags` turns the fields into flags,
and a library error that names a setting (:class:`~ddpm.errors.ParameterError`) is shown with the setting's flag.
Keys a field may carry:

- ``help``: the flag's help text;
- ``cli``: False for a field with no flag of its own;
- ``flag``: the flag, where it is not ``--`` + the field's name with dashes (``label``: ``--class``);
- ``action``: an argparse action other than the field type's (``store_false`` for ``--no-ema``, ``append``);
- ``convert``: a function that turns the parsed value into the field's value (``KEY=VALUE`` texts into a dict);
- ``metavar``, ``choices``, ``nargs``: as in argparse;
- ``resume``: True when a resumed training run must keep the value (it changes the run's numbers);
- ``unrecorded``: the value a checkpoint that does not record the field was trained with, where that differs from
  today's default.
"""

from __future__ import annotations

import dataclasses
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


def flag_of(f: Field) -> str:
    """The command-line flag of a settings field: its ``flag`` mark, else ``--`` + its name with dashes."""
    return str(f.metadata.get("flag", "--" + f.name.replace("_", "-")))


def flag_names(settings_cls: type) -> dict[str, str]:
    """{field name: flag} of every field of ``settings_cls`` (a settings dataclass)."""
    return {f.name: flag_of(f) for f in dataclasses.fields(settings_cls)}


def help_of(settings_cls: type, name: str) -> str:
    """The help text of field ``name`` of ``settings_cls``, for a command that shares the setting."""
    return str(next(f.metadata["help"] for f in dataclasses.fields(settings_cls) if f.name == name))
