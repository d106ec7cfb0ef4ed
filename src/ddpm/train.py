"""The training loop.

One step: draw t uniformly from 0..T−1 and ε ~ N(0, I), form x_t = q_sample(x_0, t, ε) **with that ε**,
and minimise ‖target − net(x_t, t)‖² (target ε for ε-prediction). AdamW with linear LR warm-up,
gradient clipping, an EMA of the weights (with warm-up), optional bf16 autocast.

Every random draw of step k comes from a generator seeded by (seed, k, rank), and the data order of
epoch e from one seeded by (seed, e). The run is therefore a pure function of its config: resuming
needs no saved RNG state, and a run's images do not depend on when it was interrupted.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import (
    CHECKPOINT_DIR,
    checkpoint_name,
    list_checkpoints,
    save_checkpoint,
    save_training_state,
    state_path,
)
from .data import ImageDataset, load_dataset
from .diffusion import PREDICTIONS, q_sample, training_target
from .errors import UserError
from .images import make_grid, save_png, to_uint8
from .sampling import image_generators, sample
from .schedule import Schedule
from .unet import PRESETS, UNet


def _opt(help: str, **kw: Any) -> Any:
    return field(metadata={"help": help, **kw.pop("meta", {})}, **kw)


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved in every checkpoint. CLI flags are derived from it."""

    out: str = _opt("run directory: checkpoints, sample grids and metrics go here", default="")
    data: str = _opt("'digits', 'fashion-mnist', or a path to IDX files / CIFAR batches / an image folder",
                     default="digits")
    steps: int | None = _opt("total optimisation steps (default 5000 when --minutes is not given)", default=None)
    minutes: float | None = _opt("stop after this many minutes of training (and at --steps if given)", default=None)
    preset: str = _opt(f"network preset: {', '.join(PRESETS)}", default="tiny")
    image_size: int | None = _opt("resize/crop images to this size (default: the data's own size)", default=None)
    batch_size: int = _opt("images per optimisation step", default=128)
    lr: float = _opt("AdamW learning rate after warm-up", default=1e-3)
    warmup: int = _opt("linear learning-rate warm-up steps", default=200)
    weight_decay: float = _opt("AdamW weight decay", default=0.0)
    grad_clip: float = _opt("clip the gradient norm to this value (0: off)", default=1.0)
    ema_decay: float = _opt("EMA decay of the weights (warmed up as min(decay, (1+n)/(10+n)))", default=0.999)
    seed: int = _opt("seed of every random draw of the run", default=0)
    timesteps: int = _opt("diffusion steps T", default=1000)
    schedule: str = _opt("beta schedule: linear or cosine", default="linear")
    beta_start: float = _opt("first beta of the linear schedule", default=1e-4)
    beta_end: float = _opt("last beta of the linear schedule", default=0.02)
    prediction: str = _opt("what the network predicts: eps, x0 or v", default="eps")
    dropout: float | None = _opt("dropout in residual blocks (default: the preset's)", default=None)
    sample_every: int = _opt("write a sample grid (EMA weights) every this many steps (0: only at the end)",
                             default=1000)
    sample_steps: int = _opt("sampler steps for the grids written during training", default=100)
    num_samples: int = _opt("images in each sample grid", default=64)
    checkpoint_every: int = _opt("write a checkpoint every this many steps (0: only at the end)", default=1000)
    keep: int = _opt("checkpoints to keep (the newest)", default=3)
    log_every: int = _opt("append a metrics line to metrics.jsonl every this many steps", default=50)
    bf16: bool = _opt("bf16 autocast for the forward pass", default=False)
    device: str = _opt("cpu, cuda, mps or auto", default="auto")
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
        for name in ("batch_size", "timesteps", "num_samples", "sample_steps", "keep", "log_every"):
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
        if self.sample_steps > self.timesteps:
            raise UserError(f"--sample-steps ({self.sample_steps}) cannot exceed --timesteps ({self.timesteps})")

    def make_schedule(self) -> Schedule:
        try:
            if self.schedule == "cosine":
                return Schedule.cosine(self.timesteps)
            return Schedule.linear(self.timesteps, self.beta_start, self.beta_end)
        except ValueError as e:
            raise UserError(str(e)) from None


def config_fields() -> list[Any]:
    """The dataclass fields of TrainConfig (for the CLI)."""
    return list(fields(TrainConfig))


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use cpu, cuda, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available: use --device cpu")
    return dev


def _mix(*numbers: int) -> int:
    """A 63-bit seed from several integers (splitmix64 steps), so (seed, step) pairs never collide."""
    z = 0x9E3779B97F4A7C15
    for n in numbers:
        z = (z ^ (int(n) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 % (1 << 64)
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB % (1 << 64)
        z ^= z >> 31
    return z & 0x7FFFFFFFFFFFFFFF


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> Tensor:
    """Indices (batch_size,) of the images in ``step``'s batch: epoch-wise shuffles, last partial batch dropped.

    With fewer images than one batch, an epoch is several shuffles concatenated.
    """
    per_epoch = max(1, n // batch_size)
    epoch, j = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(_mix(seed, epoch, 0xDA7A))
    reps = max(1, math.ceil(batch_size / n))
    perm = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])
    return perm[j * batch_size:(j + 1) * batch_size]


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · model, parameter by parameter; buffers are copied."""
    e_params = [p for p in ema.parameters()]
    m_params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers(), strict=True):
        eb.copy_(mb)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA warm-up: the average starts short and lengthens, min(decay, (1+n)/(10+n))."""
    return min(decay, (1 + step) / (10 + step))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup steps, then constant."""
    if cfg.warmup <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup)


def checkpoint_meta(cfg: TrainConfig, model: UNet, data: ImageDataset, schedule: Schedule, step: int) -> dict:
    """Everything needed to sample from a checkpoint, as JSON-ready values."""
    return {
        "step": step,
        "model": model.config.to_dict(),
        "schedule": schedule.to_dict(),
        "prediction": cfg.prediction,
        "image_size": data.image_size,
        "channels": data.channels,
        "normalization": {"range": [-1.0, 1.0], "to_pixels": "round((x + 1) * 127.5)"},
        "class_names": data.class_names,
        "data": data.name,
        "train": asdict(cfg),
    }


def write_grid(path: Path, model: nn.Module, schedule: Schedule, cfg: TrainConfig, data: ImageDataset,
               device: torch.device) -> None:
    """Sample cfg.num_samples images from ``model`` (seeded by cfg.seed) and write them as one grid PNG."""
    model.eval()
    n = cfg.num_samples
    gens = image_generators(cfg.seed, range(n))
    x = sample(model, (n, data.channels, data.image_size, data.image_size), schedule, sampler="ddpm",
               steps=cfg.sample_steps, generator=gens, prediction=cfg.prediction, device=device)
    scale = max(1, 64 // data.image_size)
    save_png(path, make_grid(to_uint8(x), scale=scale))


class _Metrics:
    """Appends one JSON object per line to RUN_DIR/metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def prepare_run_dir(out: Path) -> None:
    """Create the run directory; refuse one that already holds a run, so nothing is overwritten."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory: choose another --out")
    existing = list_checkpoints(out)
    if existing:
        raise UserError(f"{out} already holds a run ({len(existing)} checkpoints, latest step {existing[-1][0]}): "
                        "choose another --out")
    (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)


def train(cfg: TrainConfig) -> Path:
    """Run training as configured; returns the path of the last checkpoint written."""
    cfg.validate()
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    schedule = cfg.make_schedule()
    data = load_dataset(cfg.data, cfg.image_size)
    prepare_run_dir(out)

    overrides: dict[str, Any] = {"channels": data.channels, "image_size": data.image_size}
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    try:
        model = UNet.from_preset(cfg.preset, **overrides).to(device)
    except ValueError as e:
        raise UserError(f"preset {cfg.preset!r} does not fit the data: {e}") from None
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    images = data.images.to(device)  # (N, C, H, W) in [-1, 1]
    total = cfg.steps if cfg.steps is not None else (None if cfg.minutes is not None else 5000)
    deadline = time.monotonic() + cfg.minutes * 60 if cfg.minutes is not None else math.inf
    metrics = _Metrics(out / "metrics.jsonl")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="training", unit="step", dynamic_ncols=True)

    def save(step: int) -> Path:
        path = out / CHECKPOINT_DIR / checkpoint_name(step)
        meta = checkpoint_meta(cfg, model, data, schedule, step)
        save_training_state(state_path(path), {"step": step, "optimizer": opt.state_dict()})
        save_checkpoint(path, model.state_dict(), ema.state_dict(), meta)
        for _, old in list_checkpoints(out)[:-cfg.keep]:
            old.unlink(missing_ok=True)
            state_path(old).unlink(missing_ok=True)
        return path

    step = 0
    smooth = None
    t_start = time.monotonic()
    last_path: Path | None = None
    model.train()
    while (total is None or step < total) and time.monotonic() < deadline:
        torch.manual_seed(_mix(cfg.seed, step, 0))  # dropout and every draw below
        idx = batch_indices(step, len(images), cfg.batch_size, cfg.seed).to(device)
        x0 = images[idx]
        t = torch.randint(0, schedule.timesteps, (x0.shape[0],), device=device)
        noise = torch.randn_like(x0)
        x_t = q_sample(x0, t, noise, schedule)
        with autocast:
            pred = model(x_t, t)
        loss = F.mse_loss(pred.float(), training_target(x0, noise, t, schedule, cfg.prediction))
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {loss.item()} at step {step}: lower --lr (now {cfg.lr}) or "
                            "turn off --bf16; no checkpoint was written over the good ones")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.step()
        decay = ema_decay_at(step, cfg.ema_decay)
        ema_update(ema, model, decay)
        step += 1

        lv = loss.item()
        smooth = lv if smooth is None else 0.98 * smooth + 0.02 * lv
        elapsed = time.monotonic() - t_start
        if bar is not None:
            bar.update(1)
            post = {"loss": f"{smooth:.4f}", "img/s": f"{step * cfg.batch_size / elapsed:.0f}"}
            if total is None:
                post["left"] = f"{max(0.0, deadline - time.monotonic()) / 60:.1f}min"
            bar.set_postfix(post, refresh=False)
        if step % cfg.log_every == 0:
            metrics.write({"step": step, "loss": lv, "loss_smooth": smooth, "lr": lr_at(step - 1, cfg),
                           "grad_norm": float(gnorm), "ema_decay": decay,
                           "images_per_s": step * cfg.batch_size / elapsed, "time_s": elapsed})
        if cfg.sample_every and step % cfg.sample_every == 0:
            write_grid(out / "samples" / f"step-{step:09d}.png", ema, schedule, cfg, data, device)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            last_path = save(step)
    if bar is not None:
        bar.close()
    if last_path is None or list_checkpoints(out)[-1][0] != step:
        last_path = save(step)
    final_grid = out / "samples" / f"step-{step:09d}.png"
    if not final_grid.exists():
        write_grid(final_grid, ema, schedule, cfg, data, device)
    return last_path
