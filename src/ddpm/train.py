"""The training loop: single process, or one process per GPU under ``torchrun`` (DistributedDataParallel).

One step: draw t uniformly from 0..T−1 and ε ~ N(0, I), form x_t = q_sample(x_0, t, ε) **with that ε**,
and minimise ‖target − net(x_t, t)‖² (target ε for ε-prediction). AdamW with linear LR warm-up,
gradient clipping, an EMA of the weights (with warm-up), optional bf16 autocast.

Randomness is a pure function of the config: the data order of epoch e comes from a generator seeded
by (seed, e), and step k's timesteps, noise, label dropout and flips for the *whole global batch* from
one seeded by (seed, k); each rank and micro-batch takes its slice. So

- resuming needs no saved RNG state: N steps + resume + N steps equals 2N steps bit for bit;
- W processes with batch B give the same updates as one process with batch W·B (up to float
  summation order), which the tests check.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .checkpoint import (
    CHECKPOINT_DIR,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    load_training_state,
    remove_partial_writes,
    save_checkpoint,
    save_training_state,
    state_path,
)
from .data import ImageDataset, load_dataset
from .diffusion import PREDICTIONS
from .errors import UserError
from .images import make_grid, plot_curve, save_png, to_uint8
from .losses import LOSS_WEIGHTS, T_SAMPLINGS, Objective
from .runtime import Dist, cpu_bf16_native, default_bf16, pick_device, setup_processes  # noqa: F401
from .sampling import DEFAULT_SAMPLER, image_generators, sample
from .schedule import Schedule
from .scoring import TrainingEval
from .seeding import mix
from .unet import PRESETS, UNet, UNetConfig, check_labels


def _opt(help: str, **kw: Any) -> Any:
    return field(metadata={"help": help, **kw.pop("meta", {})}, **kw)


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved in every checkpoint. CLI flags are derived from it."""

    out: str = _opt("run directory: checkpoints, sample grids and metrics go here", default="")
    data: str = _opt("'digits', 'fashion-mnist', or a path to IDX files / CIFAR batches / an image folder",
                     default="digits")
    resume: bool = _opt("continue the run in --out from its latest checkpoint, exactly", default=False)
    steps: int | None = _opt("total optimisation steps, counting those before a resume (default 5000 when "
                             "--minutes is not given)", default=None)
    minutes: float | None = _opt("stop after this many minutes of training (and at --steps if given)", default=None)
    preset: str = _opt(f"network preset: {', '.join(PRESETS)}", default="tiny")
    init_from: str | None = _opt("start a new run from this checkpoint's weights, EMA and raw (a file or run "
                                 "directory, e.g. one made by `ddpm convert`); its network is used, not --preset",
                                 default=None)
    base_channels: int | None = _opt("network width: channels of the first level (default: the preset's)",
                                     default=None)
    channel_mult: str | None = _opt("width multiplier of each resolution level, comma-separated, e.g. 1,2,2 (one "
                                    "level per entry; default: the preset's)", default=None)
    res_blocks: int | None = _opt("residual blocks per resolution level (default: the preset's)", default=None)
    attention: str | None = _opt("feature-map sizes that get self-attention besides the middle block's, "
                                 "comma-separated, e.g. 7,8, or 'none' (default: the preset's)", default=None)
    norm_groups: int | None = _opt("GroupNorm groups (fewer where a width is not divisible; default: the preset's, "
                                   "32)", default=None)
    scale_shift_norm: bool | None = _opt("residual blocks take the time embedding as a scale and shift of their second "
                                         "GroupNorm (adaptive GroupNorm) instead of an addend (default: the "
                                         "preset's)", default=None)
    image_size: int | None = _opt("resize/crop images to this size (default: the data's own size)", default=None)
    skip_bad: bool = _opt("skip image files that cannot be read instead of stopping", default=False)
    flip: bool = _opt("random horizontal flips of the training images", default=False)
    class_cond: bool = _opt("condition on the dataset's labels (for classifier-free guidance)", default=False)
    label_dropout: float = _opt("with --class-cond, the share of labels dropped to 'no label'", default=0.1)
    batch_size: int = _opt("images per optimisation step per process", default=64)
    grad_accum: int = _opt("micro-batches per step: effective batch = batch-size x processes x grad-accum",
                           default=1)
    lr: float = _opt("AdamW learning rate after warm-up", default=1e-3)
    warmup: int = _opt("linear learning-rate warm-up steps", default=200)
    lr_schedule: str = _opt("after warm-up: 'constant', or 'cosine'/'linear' decay to 0 at --steps (with --minutes "
                            "alone: at the step the measured speed reaches by the deadline)", default="constant")
    loss_weight: str = _opt("per-timestep loss weight: 'none' (plain MSE), 'min-snr' (min(SNR, gamma) on the x0 "
                            "error, Hang et al. 2023) or 'p2' (1/(1+SNR)^gamma on the eps error, Choi et al. 2022)",
                            default="none")
    loss_gamma: float | None = _opt("gamma of --loss-weight (default: 5 for min-snr, 1 for p2)", default=None)
    t_stratified: bool = _opt("stratified timesteps: the batch's draws of u in [0, 1) are one random shift of "
                              "0, 1/B, ..., (B-1)/B, shuffled, so every batch covers the t-range evenly (each draw "
                              "keeps its density)", default=True)
    t_sampling: str = _opt("how training timesteps are drawn: 'uniform' or 'laplace' (log-SNR ~ Laplace(--laplace-loc, "
                           "--laplace-scale), Hang et al. 2024)", default="uniform")
    laplace_loc: float = _opt("centre of the Laplace density on log-SNR", default=0.0)
    laplace_scale: float = _opt("scale of the Laplace density on log-SNR", default=0.5)
    weight_decay: float = _opt("AdamW weight decay", default=0.0)
    adam_beta2: float = _opt("AdamW beta2, the decay of the squared-gradient average", default=0.99)
    grad_clip: float = _opt("clip the gradient norm to this value (0: off)", default=1.0)
    ema_decay: float = _opt("EMA decay of the weights (warmed up as min(decay, (1+n)/(10+n)))", default=0.999)
    seed: int = _opt("seed of every random draw of the run", default=0)
    timesteps: int = _opt("diffusion steps T", default=1000)
    schedule: str = _opt("beta schedule: linear or cosine", default="linear")
    beta_start: float = _opt("first beta of the linear schedule", default=1e-4)
    beta_end: float = _opt("last beta of the linear schedule", default=0.02)
    prediction: str = _opt("what the network predicts: eps, x0 or v", default="eps")
    dropout: float | None = _opt("dropout in residual blocks (default: the preset's)", default=None)
    nonfinite: str = _opt("on a NaN/inf loss or gradient: 'stop' (no checkpoint is written) or 'skip' the step",
                          default="stop")
    sample_every: int = _opt("write a sample grid (EMA weights) every this many steps (0: only at the end)",
                             default=1000)
    sample_steps: int = _opt("steps of the default sampler for the grids written during training", default=20)
    num_samples: int = _opt("images in each sample grid", default=64)
    checkpoint_every: int = _opt("write a checkpoint every this many steps (0: only at the end)", default=1000)
    keep: int = _opt("checkpoints to keep (the newest)", default=3)
    log_every: int = _opt("append a metrics line to metrics.jsonl every this many steps", default=50)
    tensorboard: bool = _opt("also write TensorBoard events (needs the tensorboard package)", default=False)
    eval_every: int = _opt("score --eval-num EMA samples against the train split every this many steps, into "
                           "metrics.jsonl and eval.png (0: off)", default=0)
    eval_num: int = _opt("images sampled for each --eval-every score", default=500)
    eval_metric: str = _opt("--eval-every metric: fd (FeatureNet, seconds on a CPU) or fid (Inception-v3)",
                            default="fd")
    device: str = _opt("cpu, cuda, mps or auto", default="auto")
    bf16: bool | None = _opt("bf16 autocast for the network (default: on where the hardware computes bf16 natively: "
                             "CUDA GPUs that support it, CPUs with AVX512-BF16/AMX or Arm BF16; on resume, the "
                             "run's own choice)", default=None)
    compile: bool = _opt("torch.compile the network", default=False)
    channels_last: bool | None = _opt("channels-last memory format (default: on for CUDA)", default=None)
    progress: bool = _opt("show a progress bar", default=True, meta={"cli": False})

    def validate(self) -> None:
        """Raise UserError naming the first bad value."""
        if not self.out:
            raise UserError("--out is required: the run directory to write checkpoints and samples into")
        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        if self.prediction not in PREDICTIONS:
            raise UserError(f"unknown prediction {self.prediction!r}: choose one of {', '.join(PREDICTIONS)}")
        if self.schedule not in ("linear", "cosine"):
            raise UserError(f"unknown schedule {self.schedule!r}: choose linear or cosine")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"unknown --lr-schedule {self.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
        if self.loss_weight not in LOSS_WEIGHTS:
            raise UserError(f"unknown --loss-weight {self.loss_weight!r}: choose one of {', '.join(LOSS_WEIGHTS)}")
        if self.t_sampling not in T_SAMPLINGS:
            raise UserError(f"unknown --t-sampling {self.t_sampling!r}: choose one of {', '.join(T_SAMPLINGS)}")
        if not (math.isfinite(self.adam_beta2) and 0 <= self.adam_beta2 < 1):
            raise UserError(f"--adam-beta2 must be in [0, 1), e.g. 0.999 or 0.99; got {self.adam_beta2}")
        if self.loss_gamma is not None and not (math.isfinite(self.loss_gamma) and self.loss_gamma > 0):
            raise UserError(f"--loss-gamma must be a positive number; got {self.loss_gamma}")
        if not (math.isfinite(self.laplace_scale) and self.laplace_scale > 0) or not math.isfinite(self.laplace_loc):
            raise UserError(f"--laplace-scale must be positive and --laplace-loc finite; got {self.laplace_scale}, "
                            f"{self.laplace_loc}")
        if self.nonfinite not in ("stop", "skip"):
            raise UserError(f"--nonfinite must be 'stop' or 'skip'; got {self.nonfinite!r}")
        for name in ("batch_size", "grad_accum", "timesteps", "num_samples", "sample_steps", "keep", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        for name in ("sample_every", "checkpoint_every", "warmup"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0; got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--steps must be at least 1; got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise UserError(f"--minutes must be positive; got {self.minutes}")
        if not 0 < self.lr < 1:
            raise UserError(f"--lr must lie in (0, 1); got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"--ema-decay must lie in [0, 1); got {self.ema_decay}")
        if not 0 <= self.label_dropout < 1:
            raise UserError(f"--label-dropout must lie in [0, 1); got {self.label_dropout}")
        if self.network_overrides() and self.init_from is not None:  # also raises on a malformed list
            raise UserError("--init-from keeps its checkpoint's network: drop --base-channels, --channel-mult, "
                            "--res-blocks and --attention")
        if self.eval_every < 0 or self.eval_num < 2 or self.eval_metric not in ("fd", "fid"):
            raise UserError(f"--eval-every must be >= 0, --eval-num >= 2 and --eval-metric fd or fid; got "
                            f"{self.eval_every}, {self.eval_num}, {self.eval_metric!r}")

    def network_overrides(self) -> dict[str, Any]:
        """The UNetConfig fields that --base-channels, --channel-mult, --res-blocks, --attention, --norm-groups and
        --scale-shift-norm set."""
        out: dict[str, Any] = {}
        for flag, value, name in (("--base-channels", self.base_channels, "base_channels"),
                                  ("--res-blocks", self.res_blocks, "num_res_blocks"),
                                  ("--norm-groups", self.norm_groups, "groups")):
            if value is not None:
                if value < 1:
                    raise UserError(f"{flag} must be at least 1; got {value}")
                out[name] = value
        if self.channel_mult is not None:
            out["channel_mult"] = _int_list("--channel-mult", self.channel_mult, "e.g. 1,2,2")
            if not out["channel_mult"]:
                raise UserError("--channel-mult needs at least one level, e.g. 1,2,2")
        if self.attention is not None:
            spec = self.attention.strip().lower()
            out["attention_resolutions"] = () if spec == "none" else _int_list("--attention", spec, "e.g. 7 or none")
        if self.scale_shift_norm is not None:
            out["scale_shift_norm"] = self.scale_shift_norm
        return out

    def make_schedule(self) -> Schedule:
        try:
            if self.schedule == "cosine":
                return Schedule.cosine(self.timesteps)
            return Schedule.linear(self.timesteps, self.beta_start, self.beta_end)
        except ValueError as e:
            raise UserError(str(e)) from None


def _int_list(flag: str, text: str, example: str) -> tuple[int, ...]:
    """'1,2,2' -> (1, 2, 2): positive integers, or a UserError naming the flag."""
    parts = [v.strip() for v in text.split(",") if v.strip()]
    if not all(v.isdigit() and int(v) >= 1 for v in parts):
        raise UserError(f"{flag} takes comma-separated positive integers ({example}); got {text!r}")
    return tuple(int(v) for v in parts)


# Fields that decide the run's numbers: a resumed run must keep them.
RESUME_MUST_MATCH = ("data", "preset", "base_channels", "channel_mult", "res_blocks", "attention", "norm_groups",
                     "scale_shift_norm", "image_size", "flip", "class_cond", "label_dropout", "batch_size",
                     "grad_accum", "lr", "warmup", "lr_schedule", "weight_decay", "adam_beta2", "grad_clip",
                     "ema_decay", "seed", "timesteps", "schedule", "beta_start", "beta_end", "prediction", "dropout",
                     "loss_weight", "loss_gamma", "t_sampling", "t_stratified", "laplace_loc", "laplace_scale",
                     "init_from")
# Defaults that changed after checkpoints recorded nothing for the flag: such a run used the old value.
BEFORE_THE_FLAG: dict[str, Any] = {"adam_beta2": 0.999, "t_stratified": False}
LR_SCHEDULES = ("constant", "cosine", "linear")
HORIZON_AFTER = 20  # a --minutes run with a decaying LR measures its speed over this many steps


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> Tensor:
    """Indices (batch_size,) of the images in ``step``'s global batch.

    Epoch-wise shuffles, the last partial batch dropped; with fewer images than one batch an epoch is
    several shuffles concatenated. Depends only on (step, n, batch_size, seed).
    """
    per_epoch = max(1, n // batch_size)
    epoch, j = divmod(step, per_epoch)
    perm = _epoch_order(n, max(1, math.ceil(batch_size / n)), seed, epoch)
    return perm[j * batch_size:(j + 1) * batch_size]


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, reps: int, seed: int, epoch: int) -> Tensor:
    """The shuffled image order of one epoch, (n · reps,); cached so a step does not redraw it."""
    g = torch.Generator().manual_seed(mix(seed, epoch, 0xDA7A))
    return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])


@dataclass(frozen=True)
class Draws:
    """The random draws of one optimisation step for the whole global batch (G images), identical on every rank."""

    indices: Tensor  # (G,) int64: which images
    t: Tensor  # (G,) int64: their timesteps
    noise: Tensor  # (G, C, H, W): their ε
    drop: Tensor  # (G,) bool: label replaced by "no label" (class-conditional runs)
    flip: Tensor  # (G,) bool: mirrored (--flip runs)


def step_draws(step: int, seed: int, n_images: int, global_batch: int, image_shape: tuple[int, ...] | torch.Size,
               objective: Objective, label_dropout: float, device: torch.device | str = "cpu") -> Draws:
    """Step ``step``'s draws, a pure function of the arguments: the images from :func:`batch_indices`, then
    t, ε, label dropout and flips, in that order, from one generator on ``device`` seeded by (seed, step).

    ``image_shape`` is (C, H, W). Each rank and micro-batch of the loop takes its slice of the global batch.
    """
    g = torch.Generator(device).manual_seed(mix(seed, step))
    indices = batch_indices(step, n_images, global_batch, seed).to(device)
    t = objective.draw_t(global_batch, g, device)
    noise = torch.randn((global_batch, *image_shape), generator=g, device=device)
    drop = torch.rand(global_batch, generator=g, device=device) < label_dropout
    flip = torch.rand(global_batch, generator=g, device=device) < 0.5
    return Draws(indices, t, noise, drop, flip)



@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · model, parameter by parameter; buffers are copied."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers(), strict=True):
        eb.copy_(mb)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA warm-up: the average starts short and lengthens, min(decay, (1+n)/(10+n))."""
    return min(decay, (1 + step) / (10 + step))


def lr_at(step: int, cfg: TrainConfig, horizon: int | None = None) -> float:
    """The learning rate of optimisation step ``step`` (0-based).

    Linear warm-up to cfg.lr over cfg.warmup steps; then constant, or with cfg.lr_schedule 'cosine'
    lr · ½(1 + cos πp) or 'linear' lr · (1 − p), p = (step − warmup)/(horizon − warmup) clamped to [0, 1],
    so the rate reaches 0 at step ``horizon``. No horizon (not known yet) means no decay.
    """
    warm = 1.0 if cfg.warmup <= 0 else min(1.0, (step + 1) / cfg.warmup)
    if cfg.lr_schedule == "constant" or horizon is None:
        return cfg.lr * warm
    start = cfg.warmup if horizon > cfg.warmup else 0
    p = min(1.0, max(0.0, (step - start) / max(1, horizon - start)))
    decay = 0.5 * (1 + math.cos(math.pi * p)) if cfg.lr_schedule == "cosine" else 1 - p
    return cfg.lr * warm * decay


def budget_horizon(step: int, steps_per_s: float, seconds_left: float) -> int:
    """The step a run at ``step`` reaches in ``seconds_left`` at ``steps_per_s``: the decay horizon of a
    --minutes run (measured once per invocation, so such a run is reproducible only with --steps)."""
    return step + max(1, int(steps_per_s * max(0.0, seconds_left)))


def checkpoint_meta(cfg: TrainConfig, model: UNet, data: ImageDataset, schedule: Schedule, step: int,
                    world_size: int, bf16: bool = False) -> dict:
    """Everything needed to sample from a checkpoint, as JSON-ready values (``bf16``: the autocast in use)."""
    return {
        "step": step,
        "model": model.config.to_dict(),
        "schedule": schedule.to_dict(),
        "prediction": cfg.prediction,
        "image_size": data.image_size,
        "channels": data.channels,
        "normalization": {"range": [-1.0, 1.0], "to_pixels": "round((x + 1) * 127.5)"},
        "class_names": data.class_names if cfg.class_cond else None,
        "data": data.name,
        "world_size": world_size,
        "bf16": bool(bf16),
        "train": {k: v for k, v in asdict(cfg).items() if k != "progress"},
    }


# ---------------------------------------------------------------------------- processes


# ---------------------------------------------------------------------------- run directory


def prepare_run_dir(out: Path, resume: bool) -> None:
    """Create the run directory; refuse one that already holds a run unless resuming."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory: choose another --out")
    existing = list_checkpoints(out)
    if existing and not resume:
        raise UserError(f"{out} already holds a run ({len(existing)} checkpoints, latest step {existing[-1][0]}): "
                        "pass --resume to continue it, or choose another --out")
    if resume and not existing:
        raise UserError(f"nothing to resume in {out}: it holds no checkpoints (drop --resume to start a new run)")
    (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    remove_partial_writes(out / CHECKPOINT_DIR)  # half-written files of a killed process


def latest_resumable(out: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``out`` whose weights and training state both load, with that state.

    A checkpoint is renamed into place only after its state file, so the newest one is normally
    complete; older ones are the fallback if a file was damaged after the fact.
    """
    problems = []
    for _, path in reversed(list_checkpoints(out)):
        try:
            state = load_training_state(state_path(path))
            return path, state
        except UserError as e:
            problems.append(str(e))
    raise UserError(f"no checkpoint in {out} can be resumed: {problems[0] if problems else 'none found'}")


def check_compatible(saved: dict[str, Any], cfg: TrainConfig, world: int, saved_world: int, path: Path) -> None:
    """Refuse to resume with settings that would change the run's numbers, naming each difference.

    A setting the checkpoint does not record (it predates the flag) counts as what that run used: the flag's
    default then, which is today's default unless :data:`BEFORE_THE_FLAG` says otherwise."""
    defaults = {f.name: f.default for f in fields(TrainConfig)} | BEFORE_THE_FLAG
    recorded = {k: saved.get(k, defaults[k]) for k in RESUME_MUST_MATCH}
    diffs = [f"--{k.replace('_', '-')} {recorded[k]!r} in the checkpoint, {getattr(cfg, k)!r} now"
             for k in RESUME_MUST_MATCH if recorded[k] != getattr(cfg, k)]
    if saved_world != world:
        diffs.append(f"{saved_world} processes in the checkpoint, {world} now (the effective batch would change)")
    if diffs:
        raise UserError(f"cannot resume from {path.name}: " + "; ".join(diffs) + " (use the original settings)")


class _Metrics:
    """Appends one JSON object per line to RUN_DIR/metrics.jsonl; keeps (step, loss) for the loss curve."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.curve: list[tuple[int, float]] = []
        self.eval_curve: list[tuple[int, float]] = []  # (step, FD or FID) of --eval-every
        if resume_step is not None and path.exists():
            # Lines written after the checkpoint we resume from belong to steps that will be redone.
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
            self.curve = [(r["step"], r["loss_smooth"]) for r in map(json.loads, kept) if "loss_smooth" in r]
            self.eval_curve = [(r["step"], v) for r in map(json.loads, kept) for k, v in r.items()
                               if k in ("eval_fd", "eval_fid")]
        self.tb = None

    @classmethod
    def open(cls, cfg: TrainConfig, out: Path, step: int) -> _Metrics:
        """The run's log at ``step``: lines after a resumed step dropped, TensorBoard opened with --tensorboard."""
        metrics = cls(out / "metrics.jsonl", step if cfg.resume else None)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            metrics.tb = SummaryWriter(str(out / "tensorboard"))
        return metrics

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.curve.append((record["step"], record["loss_smooth"]))
        if self.tb is not None:
            for k, v in record.items():
                if k != "step":
                    self.tb.add_scalar(f"train/{k}", v, record["step"])

    def write_eval(self, step: int, record: dict[str, float], plot_path: Path) -> None:
        """One ``--eval-every`` result: a metrics.jsonl line, a TensorBoard scalar, and the plot redrawn."""
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        name, value = next((k, v) for k, v in record.items() if k in ("eval_fd", "eval_fid"))
        self.eval_curve.append((step, value))
        if self.tb is not None:
            self.tb.add_scalar(f"eval/{name[5:]}", value, step)
        if len(self.eval_curve) >= 2:
            xs, ys = zip(*self.eval_curve, strict=True)
            title = f"{name[5:].upper()} of EMA samples (lower is better), log scale"
            save_png(plot_path, plot_curve(xs, ys, title=title))

    def plot(self, path: Path) -> None:
        if len(self.curve) >= 2:
            xs, ys = zip(*self.curve, strict=True)
            save_png(path, plot_curve(xs, ys, title="training loss (smoothed), log scale"))


def write_grid(path: Path, model: nn.Module, schedule: Schedule, cfg: TrainConfig, data: ImageDataset,
               device: torch.device) -> None:
    """Sample cfg.num_samples images from ``model`` (seeded by cfg.seed) and write them as one grid PNG.

    A class-conditional model draws image i from class i mod K, one class per column.
    """
    n = cfg.num_samples
    labels, ncol = None, None
    if cfg.class_cond and data.num_classes:
        labels = torch.arange(n, device=device) % data.num_classes
        ncol = data.num_classes
    name, spacing, _ = DEFAULT_SAMPLER
    x = sample(model, (n, data.channels, data.image_size, data.image_size), schedule, sampler=name,
               steps=min(cfg.sample_steps, schedule.timesteps), spacing=spacing,
               generator=image_generators(cfg.seed, range(n)), prediction=cfg.prediction, labels=labels, device=device)
    save_png(path, make_grid(to_uint8(x), nrow=ncol, pad_value=128, scale=max(1, 64 // data.image_size)))


def networks_from_checkpoint(cfg: TrainConfig, data: ImageDataset) -> tuple[UNet, UNet]:
    """The (raw, EMA) networks for ``--init-from``: the checkpoint's network config and both its weight sets.

    The data must fit that network (channels, image size, classes) and the run must keep its schedule and
    prediction type; ``--dropout`` may change (it has no weights).
    """
    ck = load_checkpoint(cfg.init_from)
    where = f"--init-from {ck.path}"
    try:
        mcfg = UNetConfig.from_dict(ck.meta["model"])
        saved_schedule, saved_prediction = ck.meta["schedule"], ck.meta.get("prediction", "eps")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where} is damaged or from an incompatible ddpm version ({type(e).__name__})") from None
    fixes = {"channels": "use data with that many channels",
             "image_size": f"pass --image-size {mcfg.image_size}",
             "num_classes": "--class-cond and the data's classes must match the checkpoint's"}
    for name, have in (("channels", data.channels), ("image_size", data.image_size),
                       ("num_classes", data.num_classes if cfg.class_cond else None)):
        if getattr(mcfg, name) != have:
            raise UserError(f"{where}: its network has {name}={getattr(mcfg, name)} but the data gives {have}: "
                            f"{fixes[name]}")
    if cfg.make_schedule().to_dict() != saved_schedule:
        raise UserError(f"{where}: it was trained with the schedule {saved_schedule}, this run has "
                        f"{cfg.make_schedule().to_dict()}: match --schedule/--timesteps/--beta-start/--beta-end "
                        "(a custom table cannot be fine-tuned)")
    if saved_prediction != cfg.prediction:
        raise UserError(f"{where}: it predicts {saved_prediction}, this run --prediction {cfg.prediction}: "
                        f"pass --prediction {saved_prediction}")
    if cfg.dropout is not None:
        mcfg.dropout = cfg.dropout
    raw, ema = UNet(mcfg), UNet(mcfg)
    raw.load_state_dict(ck.model)
    ema.load_state_dict(ck.ema)
    return raw, ema.eval().requires_grad_(False)


@dataclass
class Networks:
    """A run's networks at its starting step: ``raw`` (trained), ``ema``, ``model`` (what the loop calls:
    ``raw``, or its DDP/compiled wrapper), the optimizer, and the arithmetic (bf16, memory format)."""

    raw: UNet
    ema: UNet
    model: nn.Module
    opt: torch.optim.Optimizer
    step: int
    bf16: bool
    memory_format: torch.memory_format


def build_networks(cfg: TrainConfig, data: ImageDataset, px: Dist, out: Path) -> Networks:
    """The networks to train: new from cfg.preset (seeded), from --init-from, or restored with their optimizer
    from the latest checkpoint of ``out`` (--resume); on px.device, wrapped in DDP and torch.compile as asked."""
    device = px.device
    torch.manual_seed(mix(cfg.seed, 0x1417))  # the initial weights, identical on every rank
    if cfg.resume:  # the run's own network, as saved, whatever the preset means today
        path, state = latest_resumable(out)
        ck = load_checkpoint(path)
        check_compatible(ck.meta["train"], cfg, px.world, int(ck.meta.get("world_size", 1)), path)
        raw = UNet(UNetConfig.from_dict(ck.meta["model"]))
        ema = copy.deepcopy(raw).eval().requires_grad_(False)
    elif cfg.init_from is not None:  # a new run that starts from another checkpoint's network and weights
        raw, ema = networks_from_checkpoint(cfg, data)
    else:
        overrides: dict[str, Any] = {"channels": data.channels, "image_size": data.image_size,
                                     "num_classes": data.num_classes if cfg.class_cond else None}
        if cfg.dropout is not None:
            overrides["dropout"] = cfg.dropout
        overrides.update(cfg.network_overrides())
        try:
            raw = UNet.from_preset(cfg.preset, **overrides)
        except ValueError as e:
            raise UserError(f"preset {cfg.preset!r} does not fit the data: {e} (flags: --image-size, "
                            f"--channel-mult)") from None
        ema = copy.deepcopy(raw).eval().requires_grad_(False)
    opt = torch.optim.AdamW(raw.parameters(), lr=cfg.lr, betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay)

    step = 0
    bf16 = cfg.bf16 if cfg.bf16 is not None else default_bf16(device)
    if cfg.resume:
        raw.load_state_dict(ck.model)
        ema.load_state_dict(ck.ema)
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        if cfg.bf16 is None and "bf16" in ck.meta:
            bf16 = bool(ck.meta["bf16"])  # keep the run's arithmetic, so a resume stays bit-exact
        if px.main:
            print(f"resuming from {path} at step {step}")

    use_cuda = device.type == "cuda"
    channels_last = cfg.channels_last if cfg.channels_last is not None else use_cuda
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    raw.to(device, memory_format=fmt)
    ema.to(device)
    _optimizer_to(opt, device)
    model: nn.Module = raw
    if px.world > 1:
        model = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if use_cuda else None)
    if cfg.compile:
        model = torch.compile(model)
    return Networks(raw, ema, model, opt, step, bf16, fmt)



# ---------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What a finished (or signalled) run leaves: its last checkpoint and this process's networks."""

    checkpoint: Path
    step: int
    model: UNet
    ema: UNet
    stopped_by_signal: bool = False


def train(cfg: TrainConfig) -> TrainResult:
    """Run training as configured; returns the last checkpoint and the trained networks.

    Under torchrun every process calls this; only rank 0 writes files and shows progress.
    """
    cfg.validate()
    px = setup_processes(cfg.device)
    try:
        return _train(cfg, px)
    finally:
        if px.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, px: Dist) -> TrainResult:
    out = Path(cfg.out)
    data = load_dataset(cfg.data, cfg.image_size, skip_bad=cfg.skip_bad)
    if cfg.class_cond and data.labels is None:
        raise UserError(f"--class-cond needs labels, but {cfg.data} has none: use class subfolders, "
                        "an IDX label file, or drop --class-cond")
    if cfg.class_cond:
        check_labels(data.labels, data.num_classes)  # once: the network checks only shapes
    if px.main:
        prepare_run_dir(out, cfg.resume)
        if data.skipped:
            print(f"skipped {len(data.skipped)} unreadable file(s) (--skip-bad): {', '.join(data.skipped[:5])}")
    px.barrier()
    schedule = cfg.make_schedule()
    objective = Objective.create(schedule, cfg.prediction, cfg.loss_weight, cfg.loss_gamma, cfg.t_sampling,
                                 cfg.laplace_loc, cfg.laplace_scale, px.device, stratified=cfg.t_stratified)
    nets = build_networks(cfg, data, px, out)
    metrics = _Metrics.open(cfg, out, nets.step) if px.main else None
    evaluator = None
    if metrics is not None and cfg.eval_every:
        evaluator = TrainingEval(cfg.eval_metric, cfg.eval_num, data, cfg.data, cfg.seed, cfg.sample_steps, px.device)
    run = _Run(cfg, px, out, data, schedule, objective, nets, metrics, evaluator)
    with stop_signals() as caught:
        step, skipped, last_path = _loop(run, caught)
    if px.main:
        last_path = _finish(run, step, last_path)
        if caught:
            print(f"stopped by signal {signal.Signals(caught[0]).name} at step {step}; "
                  f"checkpoint written, continue with --resume")
        elif cfg.minutes is not None and cfg.steps is not None and step < cfg.steps:
            print(f"stopped at step {step} of {cfg.steps}: the --minutes {cfg.minutes:g} budget ran out; "
                  "the same command with --resume continues")
        if skipped:
            print(f"skipped {skipped} step(s) with a non-finite loss or gradient")
    px.barrier()
    return TrainResult(last_path or out / CHECKPOINT_DIR / checkpoint_name(step), step, nets.raw, nets.ema,
                       bool(caught))


@dataclass
class _Run:
    """What the loop reads: the config, this process, the data, the objective, the networks and the logs."""

    cfg: TrainConfig
    px: Dist
    out: Path
    data: ImageDataset
    schedule: Schedule
    objective: Objective
    nets: Networks
    metrics: _Metrics | None
    evaluator: TrainingEval | None

    def save(self, step: int) -> Path:
        """Write checkpoint ``step`` (its state file first) and drop all but the newest cfg.keep."""
        cfg, nets = self.cfg, self.nets
        path = self.out / CHECKPOINT_DIR / checkpoint_name(step)
        # The state file first: a checkpoint name that exists always has its state beside it.
        save_training_state(state_path(path), {"step": step, "optimizer": nets.opt.state_dict()})
        meta = checkpoint_meta(cfg, nets.raw, self.data, self.schedule, step, self.px.world, nets.bf16)
        save_checkpoint(path, nets.raw.state_dict(), nets.ema.state_dict(), meta)
        for _, old in list_checkpoints(self.out)[:-cfg.keep]:
            old.unlink(missing_ok=True)
            state_path(old).unlink(missing_ok=True)
        return path


def _loop(run: _Run, caught: list[int]) -> tuple[int, int, Path | None]:
    """Optimise from run.nets.step until --steps, --minutes or a signal; returns (step, skipped, last checkpoint)."""
    cfg, px, nets, data, device = run.cfg, run.px, run.nets, run.data, run.px.device
    B, W, A = cfg.batch_size, px.world, cfg.grad_accum
    global_batch = B * W * A
    total = cfg.steps if cfg.steps is not None else (None if cfg.minutes is not None else 5000)
    deadline = time.monotonic() + cfg.minutes * 60 if cfg.minutes is not None else math.inf
    horizon = total  # the LR decay's end; a --minutes run measures it after HORIZON_AFTER steps
    pixels = data.pixels.to(device)  # (N, C, H, W), uint8 codes or float32; each batch is converted
    labels_all = data.labels.to(device) if cfg.class_cond else None
    step = start_step = nets.step
    smooth, skipped, last_path, t_start = None, 0, None, time.monotonic()
    bar = _progress_bar(total, step) if cfg.progress and px.main else None
    nets.raw.train()
    try:
        while (total is None or step < total) and not px.any(bool(caught) or time.monotonic() >= deadline):
            d = step_draws(step, cfg.seed, len(data), global_batch, pixels.shape[1:], run.objective,
                           cfg.label_dropout, device)
            nets.opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for a in range(A):
                sl = slice((a * W + px.rank) * B, (a * W + px.rank + 1) * B)
                torch.manual_seed(mix(cfg.seed, step, px.rank, a))  # dropout masks
                x0 = data.to_unit(pixels[d.indices[sl]])
                if cfg.flip:
                    x0 = torch.where(d.flip[sl].view(-1, 1, 1, 1), x0.flip(-1), x0)
                y = None if labels_all is None else torch.where(d.drop[sl], -1, labels_all[d.indices[sl]])
                sync = contextlib.nullcontext() if (a == A - 1 or W == 1) else nets.model.no_sync()
                with sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=nets.bf16):
                    loss = run.objective.loss(nets.model, x0, d.t[sl], d.noise[sl], y, nets.memory_format)
                    (loss / A).backward()
                loss_sum += loss.item() / A
            limit = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            gnorm = float(torch.nn.utils.clip_grad_norm_(nets.raw.parameters(), limit))
            # Every rank takes part in the vote, so all skip (or stop at) the same step.
            if px.any(not (math.isfinite(gnorm) and math.isfinite(loss_sum))):
                if cfg.nonfinite == "stop":
                    raise UserError(f"the loss or gradient became non-finite at step {step} (loss {loss_sum}): "
                                    f"lower --lr (now {cfg.lr}) or turn off --bf16, then --resume; the "
                                    "checkpoints on disk are untouched (or pass --nonfinite skip)")
                skipped += 1
                nets.opt.zero_grad(set_to_none=True)
                step += 1
                continue
            for group in nets.opt.param_groups:
                group["lr"] = lr_at(step, cfg, horizon)
            nets.opt.step()
            decay = ema_decay_at(step, cfg.ema_decay)
            ema_update(nets.ema, nets.raw, decay)
            step += 1

            smooth = loss_sum if smooth is None else 0.98 * smooth + 0.02 * loss_sum
            elapsed = max(time.monotonic() - t_start, 1e-9)
            rate = (step - start_step) * global_batch / elapsed
            if horizon is None and cfg.lr_schedule != "constant" and step - start_step == HORIZON_AFTER:
                horizon = px.max_int(budget_horizon(step, (step - start_step) / elapsed, deadline - time.monotonic()))
            if bar is not None:
                left = None if total is not None else max(0.0, deadline - time.monotonic()) / 60
                bar.set_postfix({"loss": f"{smooth:.4f}", "img/s": f"{rate:.0f}",
                                 **({} if left is None else {"left": f"{left:.1f}min"})}, refresh=False)
                bar.update(1)
            if run.metrics is not None and step % cfg.log_every == 0:
                run.metrics.write({"step": step, "loss": loss_sum, "loss_smooth": smooth,
                                   "lr": lr_at(step - 1, cfg, horizon), "grad_norm": gnorm, "ema_decay": decay,
                                   "images_per_s": rate, "time_s": elapsed, "skipped_steps": skipped,
                                   "bf16": nets.bf16})
            last_path = _periodic(run, step) or last_path
    finally:
        if bar is not None:
            bar.close()
    return step, skipped, last_path


def _periodic(run: _Run, step: int) -> Path | None:
    """The every-K-steps work after ``step``: sample grid, --eval-every score, checkpoint (its path)."""
    cfg, px, out = run.cfg, run.px, run.out
    if px.main and cfg.sample_every and step % cfg.sample_every == 0:
        write_grid(out / "samples" / f"step-{step:09d}.png", run.nets.ema, run.schedule, cfg, run.data, px.device)
        run.metrics.plot(out / "loss.png")
    if run.evaluator is not None and step % cfg.eval_every == 0:
        result = run.evaluator(run.nets.ema, run.schedule, cfg.prediction,
                               run.data.num_classes if cfg.class_cond else None)
        run.metrics.write_eval(step, result, out / "eval.png")
    if px.main and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
        return run.save(step)
    return None


def _finish(run: _Run, step: int, last_path: Path | None) -> Path:
    """After the loop (rank 0): the final checkpoint and grid unless written at this step, the loss plot."""
    found = list_checkpoints(run.out)
    if not found or found[-1][0] != step:
        last_path = run.save(step)
    last_path = last_path or found[-1][1]
    final_grid = run.out / "samples" / f"step-{step:09d}.png"
    if not final_grid.exists():
        write_grid(final_grid, run.nets.ema, run.schedule, run.cfg, run.data, run.px.device)
    if run.metrics is not None:
        run.metrics.plot(run.out / "loss.png")
        if run.metrics.tb is not None:
            run.metrics.tb.close()
    return last_path


def _progress_bar(total: int | None, step: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=step, desc="training", unit="step", dynamic_ncols=True)


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """SIGTERM (schedulers, `kill`) and SIGINT (Ctrl-C) are caught into the yielded list instead of stopping
    the process: the loop finishes its step, writes a checkpoint and exits 0. The handlers are restored after.
    Off the main thread (where signals cannot be caught) it changes nothing."""
    caught: list[int] = []
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, lambda s, _f: caught.append(s))
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _optimizer_to(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """Move loaded optimizer state (exp_avg, ...) to the parameters' device. `step` counters stay on CPU."""
    for state in opt.state.values():
        for k, v in state.items():
            if isinstance(v, Tensor) and k != "step":
                state[k] = v.to(device)
