"""What a run shows and leaves behind besides checkpoints: metrics.jsonl (and TensorBoard), the loss and eval
curves, the sample grids, the progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import ParameterError
from ..files import append_line, atomic_write
from ..generate import draw, fitting_batch
from ..images import grid_scale, make_grid, plot_curve, save_png, to_uint8
from ..sampler_choice import DEFAULT_SAMPLER, SamplerChoice
from ..schedule import Schedule
from ..unet import UNet
from .batches import TrainingSet
from .config import TrainConfig


class MetricsLog:
    """Appends one JSON object per line to RUN_DIR/metrics.jsonl; keeps (step, loss) for the loss curve."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.curve: list[tuple[int, float]] = []
        self.eval_curve: list[tuple[int, float]] = []  # (step, FD or FID) of --eval-every
        if resume_step is not None and path.exists():
            # Lines written after the checkpoint we resume from belong to steps that will be redone.
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            atomic_write(path, "".join(line + "\n" for line in kept))
            self.curve = [(r["step"], r["loss_smooth"]) for r in map(json.loads, kept) if "loss_smooth" in r]
            self.eval_curve = [
                (r["step"], v) for r in map(json.loads, kept) for k, v in r.items() if k in ("eval_fd", "eval_fid")
            ]
        self.tb: Any = None  # a TensorBoard SummaryWriter with --tensorboard

    @classmethod
    def open(cls, cfg: TrainConfig, out: Path, step: int) -> MetricsLog:
        """The run's log at ``step``: lines after a resumed step dropped, TensorBoard opened with --tensorboard."""
        metrics = cls(out / "metrics.jsonl", step if cfg.resume else None)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ParameterError("{tensorboard} needs the tensorboard package: pip install tensorboard") from None
            metrics.tb = SummaryWriter(str(out / "tensorboard"))
        return metrics

    def write(self, record: dict[str, Any]) -> None:
        """Append one training record (``step``, ``loss_smooth``, ...) and keep its point of the loss curve."""
        append_line(self.path, json.dumps(record))
        self.curve.append((record["step"], record["loss_smooth"]))
        if self.tb is not None:
            for k, v in record.items():
                if k != "step":
                    self.tb.add_scalar(f"train/{k}", v, record["step"])

    def write_eval(self, step: int, record: dict[str, float], plot_path: Path) -> None:
        """One ``--eval-every`` result: a metrics.jsonl line, a TensorBoard scalar, and the plot redrawn."""
        append_line(self.path, json.dumps({"step": step, **record}))
        name, value = next((k, v) for k, v in record.items() if k in ("eval_fd", "eval_fid"))
        self.eval_curve.append((step, value))
        if self.tb is not None:
            self.tb.add_scalar(f"eval/{name[5:]}", value, step)
        if len(self.eval_curve) >= 2:
            xs, ys = zip(*self.eval_curve, strict=True)
            title = f"{name[5:].upper()} of EMA samples (lower is better), log scale"
            save_png(plot_path, plot_curve(xs, ys, title=title))

    def plot(self, path: Path) -> None:
        """Draw the smoothed loss curve (log scale) as a PNG once it has two points."""
        if len(self.curve) >= 2:
            xs, ys = zip(*self.curve, strict=True)
            save_png(path, plot_curve(xs, ys, title="training loss (smoothed), log scale"))


def write_grid(path: Path, model: UNet, schedule: Schedule, cfg: TrainConfig, items: TrainingSet,
               device: torch.device, progress: bool = False) -> None:  # fmt: skip
    """Sample cfg.num_samples images from ``model`` (seeded by cfg.seed) with the default sampler at
    cfg.sample_steps and write them as one grid PNG: in one batch, or in as many as memory needs (image i is the same
    at any batch size). ``progress`` shows a bar of the model calls where they take more than a second.

    A class-conditional model draws image i from class i mod K, one class per column. A model conditioned on an
    image draws image i given item i's condition, and the grid shows each as a triple: condition, sample, truth.
    """
    data, spec = items.data, items.spec
    n = cfg.num_samples if spec is None else min(cfg.num_samples, len(items))
    classes = data.num_classes if cfg.class_cond and data.num_classes else None
    meta = {"channels": data.channels, "image_size": data.image_size, "prediction": cfg.prediction,
            "variance": cfg.variance}  # fmt: skip
    batch = fitting_batch(model, n, device)
    choice = default_choice(cfg.sample_steps, schedule)
    parts = []
    for start in range(0, n, batch):
        idx = list(range(start, min(n, start + batch)))
        cond, level, project = items.sampling_conditions(idx, cfg.seed)
        parts.append(draw(model, schedule, meta, choice, cfg.seed, idx, None, None, True, device,
                          cycle_classes=classes, progress=progress, condition=cond, condition_level=level,
                          project=project))  # fmt: skip
    images = torch.cat(parts).cpu()
    columns = classes
    if spec is not None:  # condition | sample | truth, four triples a row
        idx = list(range(n))
        truth = items.images(torch.tensor(idx, dtype=torch.long)).cpu()
        images = torch.stack([items.shown_conditions(idx).cpu(), images, truth], 1).flatten(0, 1)
        columns = 3 * min(4, n)
    grid = make_grid(to_uint8(images), nrow=columns, pad_value=128, scale=grid_scale(data.image_size))
    save_png(path, grid)


def default_choice(steps: int, schedule: Schedule) -> SamplerChoice:
    """The default sampler and spacing (``DEFAULT_SAMPLER``) at ``steps`` steps (at most T), with its own
    option defaults: what the training grids and ``--eval-every`` sample with."""
    return SamplerChoice(DEFAULT_SAMPLER.name, DEFAULT_SAMPLER.spacing, min(steps, schedule.timesteps))


def progress_bar(total: int | None, step: int) -> Any:
    """A tqdm bar over optimisation steps, starting at ``step`` (a resumed run's)."""
    return tqdm(total=total, initial=step, desc="training", unit="step", dynamic_ncols=True)
