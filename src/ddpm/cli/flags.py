"""Flags from a settings dataclass: one flag per field declared with :func:`ddpm.settings.option`.

Every command's flags come from its settings dataclass (``ddpm train``: :class:`~ddpm.train.TrainConfig`; ``ddpm
sample``/``edit``/``eval``: :class:`~ddpm.sampler_choice.SampleSettings` and the command's own fields), so a new
field is a new flag with its help text. A field's flag is ``--`` + its name with dashes unless it carries its own
(``flag="--class"``); its dest is always the field's name, so :func:`settings_from` gives the dataclass back.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection
from typing import Any, TypeVar

from ..settings import flag_of

T = TypeVar("T")


def field_type(annotation: Any) -> type:
    """The Python type of an annotation such as 'int | None' (as a string under postponed evaluation)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "str")
    name = next(p.strip() for p in text.split("|") if p.strip() != "None")
    return {"int": int, "float": float, "str": str, "bool": bool}[name]


def add_config_flags(
    parser: argparse.ArgumentParser,
    config_cls: type,
    *,
    show_default: bool = True,
    bool_action: Any = argparse.BooleanOptionalAction,
    required: Collection[str] = (),
) -> None:
    """Add a flag for each field of ``config_cls`` with a help text and no ``cli=False`` mark.

    ``show_default`` appends " (default: X)" to the help of valued fields with a default other than None or "";
    booleans without an ``action`` mark take ``bool_action`` (``--x/--no-x`` by default, or e.g. "store_true");
    the fields named in ``required`` must be given.
    """
    parser.set_defaults(settings_class=config_cls)
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        if "help" not in meta or meta.get("cli", True) is False:
            continue
        kw: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        if f.name in required:
            kw["required"] = True
        action = meta.get("action")
        kind = meta.get("type") or (None if action == "append" else field_type(f.type))
        if action in ("store_true", "store_false") or (kind is bool and action is None):
            parser.add_argument(flag_of(f), action=action or bool_action, default=f.default, **kw)
            continue
        if show_default and f.default not in (None, "") and f.default is not dataclasses.MISSING:
            kw["help"] += f" (default: {f.default})"
        choices = meta.get("choices")
        kw.update(metavar=meta.get("metavar", None if choices else f.name.upper()), choices=choices)
        if action == "append":
            kw.update(action="append", default=[])
        else:
            kw.update(type=kind, default=None if f.default is dataclasses.MISSING else f.default)
        if "nargs" in meta:
            kw["nargs"] = meta["nargs"]
        parser.add_argument(flag_of(f), **kw)


def config_values(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The parsed values of ``config_cls``'s fields that have a flag, each through its ``convert`` mark."""
    values = {}
    for f in dataclasses.fields(config_cls):
        if hasattr(args, f.name):
            convert = f.metadata.get("convert")
            values[f.name] = convert(getattr(args, f.name)) if convert is not None else getattr(args, f.name)
    return values


def settings_from(args: argparse.Namespace, config_cls: type[T], **values: Any) -> T:
    """``config_cls`` built from the parsed flags of its fields (:func:`config_values`), updated with ``values``."""
    return config_cls(**{**config_values(args, config_cls), **values})
