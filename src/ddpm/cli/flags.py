"""Flags from a settings dataclass: one flag per field declared with :func:`ddpm.settings.option`.

``ddpm train`` (:class:`~ddpm.train.TrainConfig`) and ``ddpm eval``
(:class:`~ddpm.evaluation.evaluate.EvalSettings`) get their own flags this way, so a new field is a new flag with its
help text, and the flag names are the field names with dashes.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def field_type(annotation: Any) -> type:
    """The Python type of an annotation such as 'int | None' (as a string under postponed evaluation)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "str")
    name = next(p.strip() for p in text.split("|") if p.strip() != "None")
    return {"int": int, "float": float, "str": str, "bool": bool}[name]


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type, *, show_default: bool = True,
                     bool_action: Any = argparse.BooleanOptionalAction) -> None:
    """Add ``--name-with-dashes`` for each field of ``config_cls`` with a help text and no ``cli=False`` mark.

    ``show_default`` appends " (default: X)" to the help of fields with a default other than None or "";
    booleans take ``bool_action`` (``--x/--no-x`` by default, or e.g. "store_true").
    """
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        if "help" not in meta or meta.get("cli", True) is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind, help_text = field_type(f.type), meta["help"]
        if kind is bool:
            parser.add_argument(flag, action=bool_action, default=f.default, help=help_text)
            continue
        if show_default and f.default not in (None, ""):
            help_text += f" (default: {f.default})"
        choices = meta.get("choices")
        metavar = meta.get("metavar", None if choices else f.name.upper())
        parser.add_argument(flag, type=kind, default=f.default, choices=choices, help=help_text, metavar=metavar)


def config_values(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The parsed values of ``config_cls``'s fields that have a flag (or another argument of the same name)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if hasattr(args, f.name)}
