"""The ``ddpm`` command: parsers and ``cmd_*`` functions only; the work is done by the library.

``ddpm train`` is here (its flags are derived from :class:`ddpm.train.TrainConfig`, so a new config field is a
new flag); ``sample`` and ``edit`` in :mod:`ddpm.cli.sample`, ``eval`` in :mod:`ddpm.cli.eval`, ``convert`` in
:mod:`ddpm.cli.convert`. User mistakes print one ``error: ...`` line and exit with status 2, without a
traceback; a :class:`~ddpm.errors.ParameterError` is shown with flags in place of the library's parameter names.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

import torch

from .. import __version__
from ..errors import ParameterError, UserError
from ..train import TrainConfig, train
from .convert import add_convert_parser, cmd_convert
from .eval import add_eval_parser, cmd_eval
from .sample import FLAGS, SAMPLE_FLAGS, add_edit_parser, add_sample_parser, cmd_edit, cmd_sample


def _field_type(annotation: str) -> tuple[type, bool]:
    """(python type, optional?) of a TrainConfig annotation such as 'int | None'."""
    parts = [p.strip() for p in annotation.split("|")]
    optional = "None" in parts
    name = next(p for p in parts if p != "None")
    return {"int": int, "float": float, "str": str, "bool": bool}[name], optional


def _add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    for f in dataclasses.fields(config_cls):
        if f.metadata.get("cli", True) is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind, _ = _field_type(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str"))
        default = f.default
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            shown = "" if default in (None, "") else f" (default: {default})"
            parser.add_argument(flag, type=kind, default=default, help=help_text + shown,
                                metavar=f.name.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm", description="Train denoising diffusion models and sample them.")
    parser.add_argument("--version", action="version", version=f"ddpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model on a dataset", description="Train a diffusion model.")
    _add_config_flags(p, TrainConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    add_sample_parser(sub)
    add_edit_parser(sub)
    add_convert_parser(sub)
    add_eval_parser(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    cfg = TrainConfig(**values, progress=not args.quiet)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 speaks
        print(f"wrote {result.checkpoint}")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "edit": cmd_edit, "convert": cmd_convert, "eval": cmd_eval}
# Per command: library parameter -> flag, where the flag is not "--" + the name with dashes.
FLAG_NAMES = {"sample": SAMPLE_FLAGS, "edit": FLAGS, "eval": FLAGS}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddpm`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    torch.set_float32_matmul_precision("high")
    flags = FLAG_NAMES.get(args.command, {})
    try:
        return COMMANDS[args.command](args)
    except ParameterError as e:
        print(f"error: {e.render(lambda name: flags.get(name, '--' + name.replace('_', '-')))}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
