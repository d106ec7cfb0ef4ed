"""Sampling image-conditioned models: a model given conditions (``ddpm sample --condition``) and cascades, a base model
then super-resolution stages, each on the previous stage's output (``ddpm sample --then``; Ho et al. 2021).

A cascade is a list of :class:`Stage` s. The first draws from noise (an unconditioned model) or from the given
conditions; every later stage takes the stage before it's output, as 8-bit pixels (what a saved PNG holds, so a
cascade run by hand from files gives the same images). :func:`check_cascade` refuses, before any sampling, a stage
whose input is not the previous stage's output.

Seeds: without conditions item i's base image is image i of ``ddpm sample --seed s`` (the same draws); stage j of the
cascade draws item (key, k) from a generator seeded by (s, j, key, k), where key is the item's index, or (with
``--condition``) a hash of its condition's file name and k numbers the ``--num`` samples per condition. So every
output depends only on the seed, its condition's name and k, at any batch size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checkpoint import resolve_checkpoint
from .conditioning import ConditionSpec, low_projector
from .data.dataset import list_names
from .data.folders import image_files
from .denoiser import randn
from .errors import ParameterError, UserError, check_at_least
from .files import file_sha256
from .generate import (
    Sampling,
    check_out_dir,
    draw,
    fitting_batch,
    open_for_sampling,
    read_provenance,
    reproduce,
    save_npz,
)
from .images import (
    conform,
    grid_scale,
    load_image,
    make_grid,
    picture_size,
    read_npz_images,
    save_png,
    to_8bit,
    to_uint8,
)
from .provenance import Provenance
from .sampler_choice import SampleSettings
from .seeding import image_seed, mix
from .settings import option
from .version import __version__

# The conditioning-augmentation level a super-resolution stage is sampled at (its condition corrupted as
# sqrt(1-a) low + sqrt(a) noise, the network told a), unless --cond-noise or a stage's cond_noise says otherwise.
COND_NOISE = 0.0
# Whether a super-resolution stage projects every x̂_0 onto the images whose Lanczos-down view is its low image
# (conditioning.project_low): a stage given the user's conditions does (unless --no-project), a later stage of a
# cascade, given the previous stage's samples, does not (unless its project=1). Both chosen by measurement
# (BENCHMARKS.md, cascade.py). Pictures made before it was recorded were made without it.
PROJECT = True
PROJECT_LATER = False
# The settings a --then stage may set after its checkpoint's name ("SR.safetensors:steps=20,sampler=ddim"); any
# other key is a sampler option.
STAGE_KEYS = ("sampler", "spacing", "steps", "eta", "cond_noise", "project")


@dataclass
class Stage:
    """A model of a cascade opened for sampling: its :class:`~ddpm.generate.Sampling`, the condition it takes
    (None: it draws from noise), the augmentation level its condition is sampled at and, for super-resolution,
    whether every x̂_0 is projected onto the images whose low view is the condition
    (:func:`~ddpm.conditioning.project_low`; None: as its place in a cascade says, see :meth:`projects`)."""

    sampling: Sampling
    spec: ConditionSpec | None
    cond_noise: float = COND_NOISE
    project: bool | None = None

    @classmethod
    def open(cls, checkpoint: str | os.PathLike[str], settings: SampleSettings | None = None,
             cond_noise: float | None = None, device: torch.device | str | None = None,
             project: bool | None = None) -> Stage:  # fmt: skip
        """Open ``checkpoint`` (a file or a run directory) with ``settings`` (the measured defaults when None);
        ``cond_noise`` None takes :data:`COND_NOISE`, ``project`` None the default of the stage's place."""
        settings = dataclasses.replace(settings or SampleSettings(), checkpoint=str(checkpoint))
        s = open_for_sampling(checkpoint, settings, device, conditioned=True)
        spec = ConditionSpec.from_meta(s.meta)
        level = COND_NOISE if cond_noise is None else float(cond_noise)
        if not 0.0 <= level < 1.0:
            raise ParameterError(f"{{cond_noise}} must lie in [0, 1); got {level}")
        return cls(s, spec, level, None if project is None else bool(project))

    @property
    def output(self) -> tuple[int, int]:
        """(channels, size) of the images this stage makes."""
        return self.sampling.channels, self.sampling.image_size

    def projects(self, stage: int) -> bool:
        """Whether this stage, number ``stage`` of its cascade, projects x̂_0 onto its low images: as it was told, else
        :data:`PROJECT` for the first (conditions the user gave) and :data:`PROJECT_LATER` for a later one (the
        previous stage's samples)."""
        if self.project is not None:
            return self.project
        return PROJECT if stage == 0 else PROJECT_LATER

    def record(self, stage: int) -> dict[str, Any]:
        """How this stage, number ``stage`` of its cascade, sampled, for the provenance of a cascade's pictures."""
        c = self.sampling.choice
        out = {"checkpoint_sha256": self.sampling.sha256, "sampler": c.name, "spacing": c.spacing, "steps": c.steps,
               "options": c.options}  # fmt: skip
        if self.spec is not None and self.spec.told_level:
            out["cond_noise"] = self.cond_noise
        if self.spec is not None and self.spec.task == "super-resolution":
            out["project"] = self.projects(stage)
        return out

    def draw(self, seed: int, stage: int, keys: Sequence[tuple[int, int]], given: Tensor | None,
             progress: bool = False) -> Tensor:  # fmt: skip
        """Items ``keys`` ((key, k) each) of this stage, number ``stage`` of its cascade: (B, C, H, W) in [-1, 1].
        ``given`` are their conditions (B, Cc, h, w) (uint8 pixels or floats in [-1, 1]); None for a stage that
        draws from noise, whose item (i, 0) is image i of ``seed``."""
        s = self.sampling
        if self.spec is None:
            return draw(s.model, s.schedule, s.meta, s.choice, seed, [key for key, _ in keys], s.label, s.guidance,
                        s.clip_x0, s.device, progress=progress)  # fmt: skip
        if given is None:
            raise ParameterError(f"{s.checkpoint.path} is conditioned on an image ({self.spec.task}): pass its "
                                 "{condition}")  # fmt: skip
        gens = [torch.Generator().manual_seed(image_seed(mix(seed, stage, key), k)) for key, k in keys]
        noise_gens = [torch.Generator().manual_seed(image_seed(mix(seed, stage, key, 1), k)) for key, k in keys]
        cond, level = network_conditions(self.spec, given, s.image_size, self.cond_noise, noise_gens, s.device)
        project = low_projector(self.spec, given.to(s.device)) if self.projects(stage) else None
        return draw(s.model, s.schedule, s.meta, s.choice, seed, list(range(len(keys))), s.label, s.guidance,
                    s.clip_x0, s.device, progress=progress, condition=cond, condition_level=level,
                    generators=gens, project=project)  # fmt: skip


def network_conditions(spec: ConditionSpec, given: Tensor, image_size: int, level: float,
                       generators: Sequence[torch.Generator],
                       device: torch.device | str) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """Conditions as given (B, Cc, h, w) as a network of ``spec`` takes them at sampling time: (B, Cc, S, S) in
    [-1, 1] and, for a network told its augmentation level, the level (B,) with the condition augmented at it (its
    noise drawn from ``generators``, one per image)."""
    given = given.to(device)
    if not spec.told_level:
        return spec.network_input(given, image_size), None
    b = given.shape[0]
    levels = torch.full((b,), float(level), device=device)
    noise = randn((b, spec.channels, spec.size, spec.size), list(generators), device)
    return spec.network_input(given, image_size, levels if level > 0 else None, noise), levels


# ---------------------------------------------------------------------------- a cascade's stages


def parse_stage(text: str) -> tuple[str, dict[str, str]]:
    """``"PATH[:key=value,...]"`` -> (PATH, {key: value}). A colon is read as the settings' start only where what
    follows it is key=value pairs, so a path with a colon in it still names a file."""
    path, sep, rest = text.rpartition(":")
    if not sep or not rest or not all("=" in part for part in rest.split(",")):
        return text, {}
    pairs = {}
    for part in rest.split(","):
        key, _, value = part.partition("=")
        pairs[key.strip().replace("-", "_")] = value.strip()
    return path, pairs


def stage_settings(pairs: dict[str, str], base: SampleSettings) -> tuple[SampleSettings, float | None, bool | None]:
    """A --then stage's sampling settings from its ``key=value`` pairs (sampler, spacing, steps, eta, cond_noise,
    project; any other key is a sampler option), taking weights, clipping and device from ``base``; and its
    cond_noise and project (None where not given)."""

    def number(key: str, kind: type) -> Any:
        try:
            return kind(pairs[key]) if key in pairs else None
        except ValueError:
            raise ParameterError(f"{{then}} {key}={pairs[key]}: expected a number") from None

    options = {k: v for k, v in pairs.items() if k not in STAGE_KEYS}
    settings = SampleSettings(sampler=pairs.get("sampler"), spacing=pairs.get("spacing"), steps=number("steps", int),
                              eta=number("eta", float), options=options, ema=base.ema, clip_x0=base.clip_x0,
                              device=base.device)  # fmt: skip
    project = None
    if "project" in pairs:
        value = pairs["project"].lower()
        if value not in ("0", "1", "true", "false", "on", "off"):
            raise ParameterError(f"{{then}} project={pairs['project']}: expected 1 or 0")
        project = value in ("1", "true", "on")
    return settings, number("cond_noise", float), project


def open_cascade(settings: SampleSettings, then: Sequence[str], cond_noise: float | None = None,
                 device: torch.device | str | None = None, project: bool = PROJECT) -> list[Stage]:  # fmt: skip
    """``settings.checkpoint`` (with ``settings``) and each ``then`` stage (``PATH[:key=value,...]``), opened and
    checked to fit together (:func:`check_cascade`); every conditioned stage samples its condition at ``cond_noise``
    (None: :data:`COND_NOISE`), unless its own ``cond_noise=`` says otherwise; the first stage projects onto its
    low images as ``project`` says, a later one as its ``project=`` says (default :data:`PROJECT_LATER`)."""
    if settings.checkpoint is None:
        raise ParameterError("{checkpoint} is required: a .safetensors checkpoint or a run directory")
    stages = [Stage.open(settings.checkpoint, settings, cond_noise, device, project)]
    dev = stages[0].sampling.device  # every stage on the first one's device
    for text in then:
        path, pairs = parse_stage(text)
        if not Path(path).exists():
            raise ParameterError(f"{{then}} {path}: no such checkpoint or run directory")
        stage_set, level, own = stage_settings(pairs, settings)
        stages.append(Stage.open(path, stage_set, cond_noise if level is None else level, dev, own))
    check_cascade(stages, [settings.checkpoint, *(parse_stage(t)[0] for t in then)])
    return stages


def check_cascade(stages: Sequence[Stage], names: Sequence[str]) -> None:
    """Refuse, in one line, a later stage that is not conditioned on an image or whose input is not the output of
    the stage before it (size and channels)."""
    for j in range(1, len(stages)):
        spec, (c, size) = stages[j].spec, stages[j - 1].output
        if spec is None:
            raise ParameterError(f"{{then}} {names[j]} is not conditioned on an image, so it cannot follow "
                                 f"{names[j - 1]}: pass a super-resolution or paired checkpoint")  # fmt: skip
        if (spec.channels, spec.size) != (c, size):
            raise ParameterError(
                f"{{then}} {names[j]} takes {spec.size}x{spec.size} images with {spec.channels} channel(s), but "
                f"{names[j - 1]} before it makes {size}x{size} with {c}: a stage's input must be the output of the "
                "stage before it (reorder the stages or pass the model trained for that size)"
            )


def run_cascade(stages: Sequence[Stage], seed: int, keys: Sequence[tuple[int, int]], given: Tensor | None = None,
                progress: bool = False) -> list[Tensor]:  # fmt: skip
    """Every stage's images (B, C_j, S_j, S_j) in [-1, 1] for items ``keys`` (see :meth:`Stage.draw`), the first
    stage given ``given`` (B, Cc, h, w) conditions where it takes them."""
    outputs = []
    x = given
    for j, stage in enumerate(stages):
        # a later stage takes the output as the 8-bit pixels a saved picture holds
        out = stage.draw(seed, j, keys, x if j == 0 or x is None else to_8bit(x), progress=progress)
        outputs.append(out)
        x = out
    return outputs


def cascade(stages: Sequence[Stage], num: int | None = None, *, seed: int = 0, conditions: Tensor | None = None,
            keys: Sequence[int] | None = None, batch_size: int = 64, progress: bool = False) -> Tensor:  # fmt: skip
    """The final images of a cascade (N, C, S, S) in [-1, 1]: ``num`` images from noise where the first stage draws
    from noise (image i's base is image i of ``ddpm sample --seed``), else one per condition of ``conditions`` (N,
    Cc, h, w) (uint8 pixels or floats in [-1, 1]), keyed by ``keys`` (default: their indices). A single conditioned
    stage is a cascade of one: ``cascade([Stage.open("sr.safetensors")], conditions=low)``."""
    if not stages:
        raise ValueError("a cascade needs at least one stage")
    check_cascade(stages, [str(s.sampling.checkpoint.path) for s in stages])
    if stages[0].spec is None:
        if num is None or conditions is not None:
            raise ValueError("a cascade whose first stage draws from noise takes num, not conditions")
        items = [(i, 0) for i in range(num)]
    else:
        if conditions is None:
            raise ValueError("a cascade whose first stage is conditioned takes conditions (N, C, h, w)")
        items = [(k, 0) for k in (keys if keys is not None else range(conditions.shape[0]))]
    parts = []
    for idx in batched(stages, len(items), batch_size):
        given = None if conditions is None else conditions[idx[0] : idx[-1] + 1]
        parts.append(run_cascade(stages, seed, [items[i] for i in idx], given, progress)[-1].cpu())
    return torch.cat(parts)


def batched(stages: Sequence[Stage], n: int, batch_size: int) -> Iterator[list[int]]:
    """Items 0..n-1 in consecutive batches that fit every stage's sampling memory (each output is the same at any
    batch size, up to float rounding)."""
    b = min(batch_size, n)
    for stage in stages:
        b = fitting_batch(stage.sampling.model, b, stage.sampling.device, stage.sampling.guidance)
    for start in range(0, n, b):
        yield list(range(start, min(n, start + b)))


# ---------------------------------------------------------------------------- conditions from files


@dataclass
class Conditions:
    """Condition images read from a folder or an .npz: uint8 (N, C, h, w), their names (relative paths without the
    extension, or ``FILE.npz[i]``), each one's file hash, the names brought to the stage's size (said), and the names
    their outputs take (the relative path, or the index in the .npz), without extension."""

    pixels: Tensor
    names: list[str]
    sha256: list[str]
    resized: list[str]
    stems: list[str]

    def key(self, i: int) -> int:
        """The seed key of condition i: a hash of its name, so its outputs do not depend on the other files."""
        return name_key(self.names[i])


def name_key(name: str) -> int:
    """A 63-bit number from a condition's name (the first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 1


def read_conditions(path: str | os.PathLike[str], spec: ConditionSpec) -> Conditions:
    """The condition images of ``path`` (a folder of pictures, searched below it, or an .npz of uint8 NHWC
    ``images``) as a stage of ``spec`` takes them: brought to its size and channels the way training reads pictures
    (shorter side to the size, centre crop, Lanczos; gray and colour converted)."""
    src = Path(path).expanduser()
    if not src.exists():
        raise ParameterError(f"{{condition}} {src}: no such folder or file; pass a folder of images or an .npz")
    if src.is_file():
        if src.suffix.lower() != ".npz":
            raise ParameterError(f"{{condition}} {src} is a file but not an .npz: pass a folder of images or an .npz")
        arrays, _ = read_npz_images(src)  # (N, C, H, W)
        sha = file_sha256(src)
        pictures = [conform(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0), spec.channels, spec.size)
                    for a in arrays]  # fmt: skip
        names = [f"{src.name}[{i}]" for i in range(len(arrays))]
        resized = names if arrays.shape[-1] != spec.size else []
        return Conditions(_stack(pictures), names, [sha] * len(names), resized, [f"{i:06d}" for i in range(len(names))])
    files = image_files(src, recursive=True)
    if not files:
        raise ParameterError(f"{{condition}} {src} holds no images (PNG/JPEG/BMP/GIF/WebP)")
    names = [Path(os.path.relpath(f, src)).with_suffix("").as_posix() for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ParameterError(f"{{condition}} {src} holds two files named {twice[0]} (other extensions): keep one, "
                             "since outputs are named after their conditions")  # fmt: skip
    resized = [n for n, f in zip(names, files, strict=True) if picture_size(f) != (spec.size, spec.size)]
    pictures = [load_image(f, spec.channels, spec.size, resize=True) for f in files]
    return Conditions(_stack(pictures), names, [file_sha256(f) for f in files], resized, names)


def _stack(pictures: list[np.ndarray]) -> Tensor:
    """uint8 pictures (h, w, C) -> (N, C, h, w)."""
    return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).contiguous()


def describe_resized(conditions: Conditions, spec: ConditionSpec) -> str | None:
    """The line that says which conditions were brought to the stage's size, or None."""
    if not conditions.resized:
        return None
    return (f"brought {len(conditions.resized)} condition(s) ({list_names(conditions.resized)}) to the model's "
            f"{spec.size}x{spec.size} input as training reads pictures (shorter side, centre crop, "
            "Lanczos)")  # fmt: skip


def cascade_record(stages: Sequence[Stage]) -> dict[str, str]:
    """The provenance entries of a cascade's pictures: the later stages, in order, with how each sampled (the first
    stage is the picture's own record), and the first stage's augmentation level where it takes one."""
    extra = {}
    first = stages[0]
    if first.spec is not None and first.spec.told_level:
        extra["cond_noise"] = repr(float(first.cond_noise))
    if first.spec is not None and first.spec.task == "super-resolution":
        extra["project"] = json.dumps(first.projects(0))
    if len(stages) > 1:
        extra["then"] = json.dumps([s.record(j) for j, s in enumerate(stages) if j > 0], sort_keys=True)
    return extra


# ---------------------------------------------------------------------------- ddpm sample --condition / --then


@dataclass
class CascadeSettings(SampleSettings):
    """The sampling flags of the commands that sample conditioned models and cascades (``ddpm sample``, ``ddpm
    eval``): :class:`~ddpm.sampler_choice.SampleSettings` (the --checkpoint's), then the later stages and the level
    a condition is sampled at."""

    then: list[str] = option(
        "a super-resolution (or paired) checkpoint run on the previous stage's output, repeatable: a cascade. Its "
        "own settings follow a colon: SR.safetensors:steps=20,sampler=ddim,cond_noise=0.1,project=0 (others are "
        "sampler options); the flags above are the first stage's",
        default_factory=list,
        action="append",
        metavar="CKPT[:KEY=VALUE,...]",
    )
    cond_noise: float | None = option(
        f"the conditioning-augmentation level a in [0, 1) a super-resolution model's condition is sampled at "
        f"(sqrt(1-a) low + sqrt(a) noise, the network told a), every stage's unless it sets its own (default "
        f"{COND_NOISE:g}, chosen by measurement)",
        default=None,
        metavar="A",
    )
    project: bool = option(
        "do not project a super-resolution model's every x0 estimate onto the images whose Lanczos-down view is the "
        "low image given (by default they are: the output brought down again gives it back; a later stage of a "
        "cascade is not projected unless it says project=1)",
        default=PROJECT,
        flag="--no-project",
        action="store_false",
    )


def sample_files(settings: CascadeSettings, out: str | os.PathLike[str], *, condition: str | None = None,
                 num: int | None = None, seed: int = 0, batch_size: int = 64, npz: str | None = None,
                 progress: bool = False) -> tuple[list[Path], list[str]]:  # fmt: skip
    """Write a conditioned model's or a cascade's images to ``out`` with their provenance: one per condition of
    ``condition`` (``num`` per condition: ``<name>-<k>.png``), named after it, or ``num`` images 0..num-1 (and
    grid.png) where the first stage draws from noise; with ``npz`` also the final images as uint8 NHWC. Returns (the
    paths written, lines to tell the user)."""
    check_at_least("batch_size", batch_size, 1)
    stages = open_cascade(settings, settings.then, settings.cond_noise, project=settings.project)
    conds = _conditions(stages[0], condition, settings.checkpoint)
    plan = _Plan.of(conds, num)
    out = Path(out)
    check_out_dir(out, [*plan.names, *(["grid.png"] if conds is None else [])], settings.overwrite)
    if npz and Path(npz).exists() and not settings.overwrite:
        raise ParameterError(f"{npz} already exists: choose another {{npz}} or pass {{overwrite}}")
    extra = cascade_record(stages)
    base = stages[0].sampling.provenance("sample", seed)
    c_out, size = stages[-1].output
    images = np.empty((len(plan.items), size, size, c_out), np.uint8)
    for idx in batched(stages, len(plan.items), batch_size):
        given = None if conds is None else conds.pixels[[plan.rows[i] for i in idx]]
        final = to_uint8(run_cascade(stages, seed, [plan.items[i] for i in idx], given, progress)[-1])
        for j, i in enumerate(idx):
            images[i] = final[j]
            prov = base.of("sample", plan.index(i), {**plan.condition_entry(conds, i), **extra})
            (out / plan.names[i]).parent.mkdir(parents=True, exist_ok=True)
            save_png(out / plan.names[i], final[j], prov.text_chunks())
    written = [out / n for n in plan.names]
    if conds is None:
        grid = make_grid(images, pad_value=128, scale=grid_scale(size))
        written.append(save_png(out / "grid.png", grid, base.of("grid", f"0-{len(images) - 1}", extra).text_chunks()))
    if npz:
        written.append(save_npz(npz, images))
    resized = describe_resized(conds, stages[0].spec) if conds is not None and stages[0].spec is not None else None
    return written, [resized] if resized else []


@dataclass
class _Plan:
    """What a sampling run makes: each output's seed key (key, k), its condition's row (-1: none) and its file."""

    items: list[tuple[int, int]]
    rows: list[int]
    names: list[str]

    @classmethod
    def of(cls, conds: Conditions | None, num: int | None) -> _Plan:
        """``num`` images (default 64) from noise, or ``num`` per condition (default 1)."""
        if conds is None:
            n = 64 if num is None else num
            check_at_least("num", n, 1)
            return cls([(i, 0) for i in range(n)], [-1] * n, [f"{i:06d}.png" for i in range(n)])
        k = 1 if num is None else num
        check_at_least("num", k, 1)
        rows = [c for c in range(len(conds.names)) for _ in range(k)]
        items = [(conds.key(c), j) for c in range(len(conds.names)) for j in range(k)]
        names = [f"{stem}{'' if k == 1 else f'-{j}'}.png" for stem in conds.stems for j in range(k)]
        return cls(items, rows, names)

    def index(self, i: int) -> int:
        """The index output i records: its number, or (from a condition) which of that condition's samples."""
        return i if self.rows[i] < 0 else self.items[i][1]

    def condition_entry(self, conds: Conditions | None, i: int) -> dict[str, str]:
        """The provenance entries of output i's condition: its name and file hash."""
        if conds is None:
            return {}
        c = self.rows[i]
        return {"condition": conds.names[c], "condition_sha256": conds.sha256[c]}


def _conditions(first: Stage, condition: str | None, checkpoint: str | None) -> Conditions | None:
    """The conditions a cascade's first stage takes, read from ``condition``; None for a stage that draws from
    noise (which refuses a condition)."""
    if first.spec is None:
        if condition is not None:
            raise ParameterError(f"{{condition}} is for a model conditioned on an image, and {{checkpoint}} "
                                 f"{checkpoint} draws from noise: drop {{condition}}")  # fmt: skip
        return None
    if condition is None:
        size = first.spec.size
        raise ParameterError(f"{{checkpoint}} {checkpoint} is conditioned on an image ({first.spec.task}): pass "
                             f"{{condition}} FOLDER|FILE.npz, its inputs ({size}x{size})")  # fmt: skip
    return read_conditions(condition, first.spec)


def reproduce_picture(checkpoint: str | os.PathLike[str], image: str | os.PathLike[str], out: str | os.PathLike[str],
                      *, then: Sequence[str] = (), condition: str | None = None, device: str = "auto",
                      overwrite: bool = False) -> tuple[Path, Provenance]:  # fmt: skip
    """Make sample picture ``image`` again from its metadata as ``out/<its name>`` (see
    :func:`ddpm.generate.reproduce`), where it was made by a cascade (``then``: its later stages' checkpoints, in
    order, each checked by SHA-256) or from a condition image (``condition``: the folder or .npz it was in, its file
    checked by SHA-256). Returns (the path, the picture's provenance)."""
    path, _, old = read_provenance(checkpoint, image)
    if "then" not in old.extra and "condition" not in old.extra:
        if then or condition:
            raise ParameterError(f"{{image}} {image} was made by one model without a condition: drop {{then}} and "
                                 "{condition}")  # fmt: skip
        return reproduce(checkpoint, image, out, device=device, overwrite=overwrite)
    src, out = Path(image), Path(out)
    check_out_dir(out, [src.name], overwrite)
    stages = _recorded_stages(path, old, then, device)
    key, k, given = old.index, 0, None
    if "condition" in old.extra:
        if condition is None:
            raise ParameterError(f"{{image}} {src.name} was made from the condition {old.extra['condition']}: pass "
                                 "{condition} with the folder or .npz that holds it")  # fmt: skip
        assert stages[0].spec is not None  # a stage that took a condition
        conds = read_conditions(condition, stages[0].spec)
        c = _recorded_condition(conds, old, condition)
        key, k, given = conds.key(c), int(old.index), conds.pixels[c : c + 1]
    x = run_cascade(stages, old.seed, [(int(key), k)], given)[-1]
    out.mkdir(parents=True, exist_ok=True)
    again = dataclasses.replace(old, version=__version__)
    return save_png(out / src.name, to_uint8(x)[0], again.text_chunks()), old


def _recorded_stages(path: Path, old: Provenance, then: Sequence[str], device: str) -> list[Stage]:
    """The stages a picture records, opened: its checkpoint with its settings, then each of ``then`` with the
    settings recorded for it (its SHA-256 checked)."""
    recorded = json.loads(old.extra.get("then", "[]"))
    if len(recorded) != len(then):
        raise ParameterError(f"the picture was made by a cascade of {len(recorded) + 1} stage(s), and {len(then) + 1} "
                        "were given: pass {then} with each later stage's checkpoint, in order")  # fmt: skip
    project = json.loads(old.extra.get("project", "false"))  # not recorded: made before it existed
    stages = [Stage.open(path, old.sample_settings(device), _level(old.extra.get("cond_noise")), project=project)]
    for j, (rec, text) in enumerate(zip(recorded, then, strict=True), start=1):
        stage_path, pairs = parse_stage(text)
        if pairs:
            raise ParameterError("{image} takes every setting from the picture's metadata: give each {then} "
                                 "as its checkpoint alone")  # fmt: skip
        resolved = resolve_checkpoint(stage_path)
        if file_sha256(resolved) != rec["checkpoint_sha256"]:
            raise ParameterError(f"{{then}} {stage_path} is not stage {j + 1} of the cascade the picture was made with "
                            f"(sha256 {rec['checkpoint_sha256'][:12]}): pass that checkpoint")  # fmt: skip
        options = {k: v for k, v in rec["options"].items() if k != "eta"}
        settings = SampleSettings(sampler=rec["sampler"], spacing=rec["spacing"], steps=rec["steps"],
                                  eta=rec["options"].get("eta"), options=options, ema=old.ema, clip_x0=old.clip_x0,
                                  device=device)  # fmt: skip
        stages.append(Stage.open(resolved, settings, rec.get("cond_noise"), stages[0].sampling.device,
                                 bool(rec.get("project", False))))  # fmt: skip
    check_cascade(stages, [str(path), *then])
    return stages


def _recorded_condition(conds: Conditions, old: Provenance, condition: str) -> int:
    """The index in ``conds`` of the condition a picture records, its file hash checked."""
    name = old.extra["condition"]
    if name not in conds.names:
        raise ParameterError(f"{{condition}} {condition} holds no condition named {name}: pass the folder or .npz the "
                        "picture was made from")  # fmt: skip
    c = conds.names.index(name)
    if conds.sha256[c] != old.extra.get("condition_sha256"):
        raise UserError(f"{name} in {condition} is not the file the picture was made from (its SHA-256 differs)")
    return c


def _level(value: str | None) -> float | None:
    """A recorded augmentation level back as a number (None where none was recorded)."""
    return None if not value else float(value)
