"""Paired folders: targets and their inputs, matched by relative path, for restoration models (Palette, Saharia
et al. 2022: colourisation, inpainting, uncropping, JPEG restoration), which learn p(target | input).

A target ``a/b.png`` pairs with the input of the same relative path and name in the inputs folder, any image
extension (``a/b.jpg``). A target without an input, an input without a target, and two files of one name are
one-line errors. Both folders are read the way training reads a folder (prepared once, memory-mapped), the inputs at
the targets' size, with their own channels (gray inputs for colourisation stay gray). Where ``--skip-bad`` skips an
unreadable file, its pair is left out and counted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch
from torch import Tensor

from ..errors import ParameterError
from .dataset import ImageDataset, list_names
from .folders import folder_listing
from .prepared import source_kind


@dataclass
class PairedData:
    """Targets and inputs, and which rows pair: pair i is target row ``target_rows[i]`` with input row
    ``input_rows[i]`` (both (M,) int64); ``dropped`` names the pairs left out for an unreadable partner."""

    targets: ImageDataset
    inputs: ImageDataset
    target_rows: Tensor
    input_rows: Tensor
    dropped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.target_rows.shape[0])


def pair_key(relative: str) -> str:
    """The name a file pairs by: its relative path without its extension, with forward slashes."""
    return str(PurePosixPath(relative).with_suffix(""))


def _keys(folder: Path, setting: str) -> list[str]:
    """The pairing keys of a folder of images, in load order; two files of one name are an error."""
    if source_kind(str(folder)) != "images":
        raise ParameterError(f"{{{setting}}} {folder}: pairs are read from folders of images; pass a folder")
    entries, _ = folder_listing(folder)
    keys = [pair_key(Path(os.path.relpath(name, folder)).as_posix()) for name, _ in entries]
    seen: dict[str, int] = {}
    for k in keys:
        seen[k] = seen.get(k, 0) + 1
    twice = [k for k, n in seen.items() if n > 1]
    if twice:
        raise ParameterError(f"{{{setting}}} {folder} holds two files named {twice[0]} (other extensions): keep one")
    return keys


def check_pairs(targets: Path, inputs: Path) -> tuple[list[str], list[str]]:
    """The pairing keys of both folders, refusing a target without an input and an input without a target."""
    t_keys, i_keys = _keys(targets, "data"), _keys(inputs, "condition_data")
    lonely = [k for k in t_keys if k not in set(i_keys)]
    if lonely:
        raise ParameterError(f"{{condition_data}} {inputs} has no input for {list_names(lonely)} of {{data}} "
                             f"{targets}: each target needs an input of the same relative name (any image "
                             "extension)")  # fmt: skip
    extra = [k for k in i_keys if k not in set(t_keys)]
    if extra:
        raise ParameterError(f"{{condition_data}} {inputs} holds inputs with no target in {{data}} {targets}: "
                             f"{list_names(extra)}; remove them or add their targets")  # fmt: skip
    return t_keys, i_keys


def paired_data(targets: str, inputs: str, image_size: int | None,
                load: Callable[[str, int | None], ImageDataset]) -> PairedData:  # fmt: skip
    """Both folders read by ``load(folder, image_size)`` (the inputs at the targets' size) and their pairs."""
    t_path, i_path = Path(targets).expanduser(), Path(inputs).expanduser()
    t_keys, i_keys = check_pairs(t_path, i_path)
    t_data = load(targets, image_size)
    i_data = load(inputs, t_data.image_size)
    t_kept = [k for k in t_keys if k not in {pair_key(n) for n in t_data.skipped}]
    i_kept = [k for k in i_keys if k not in {pair_key(n) for n in i_data.skipped}]
    i_row = {k: j for j, k in enumerate(i_kept)}
    pairs = [(r, i_row[k]) for r, k in enumerate(t_kept) if k in i_row]
    dropped = [k for k in t_keys if k not in {t_kept[r] for r, _ in pairs}]
    if not pairs:
        raise ParameterError(f"no pair of {{data}} {targets} and {{condition_data}} {inputs} could be read")
    rows = torch.tensor(pairs, dtype=torch.long)
    return PairedData(t_data, i_data, rows[:, 0].contiguous(), rows[:, 1].contiguous(), dropped)
