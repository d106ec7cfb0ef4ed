"""The ``ddpm`` command: parsers and ``cmd_*`` functions only; the work is done by the library.

One module per subcommand: ``train`` in :mod:`ddpm.cli.train`, ``sample`` and ``edit`` in
:mod:`ddpm.cli.sample`, ``prepare`` in :mod:`ddpm.cli.prepare`, ``eval`` in :mod:`ddpm.cli.eval`, ``convert`` in
:mod:`ddpm.cli.convert`. Each command's flags come from its settings dataclass (:mod:`ddpm.cli.flags`), so a new
field is a new flag.
User mistakes print one ``error: ...`` line and exit with status 2, without a traceback; a
:class:`~ddpm.errors.ParameterError` is shown with flags in place of the library's parameter names.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from ..errors import ParameterError, UserError
from ..runtime import hold_freed_memory
from ..settings import flag_names
from ..version import __version__
from .convert import add_convert_parser, cmd_convert
from .eval import add_eval_parser, cmd_eval
from .prepare import add_prepare_parser, cmd_prepare
from .sample import add_edit_parser, add_sample_parser, cmd_edit, cmd_sample
from .train import add_train_parser, cmd_train


def build_parser() -> argparse.ArgumentParser:
    """The ``ddpm`` parser with one subcommand per module of this package."""
    parser = argparse.ArgumentParser(prog="ddpm", description="Train denoising diffusion models and sample them.")
    parser.add_argument("--version", action="version", version=f"ddpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    add_train_parser(sub)
    add_prepare_parser(sub)
    add_sample_parser(sub)
    add_edit_parser(sub)
    add_convert_parser(sub)
    add_eval_parser(sub)
    return parser


COMMANDS = {
    "train": cmd_train,
    "prepare": cmd_prepare,
    "sample": cmd_sample,
    "edit": cmd_edit,
    "convert": cmd_convert,
    "eval": cmd_eval,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddpm`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    torch.set_float32_matmul_precision("high")
    hold_freed_memory()  # glibc keeps freed tensor memory (benchmarks/malloc.py); DDPM_MALLOC=system opts out
    settings_class = getattr(args, "settings_class", None)
    flags = flag_names(settings_class) if settings_class is not None else {}
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
