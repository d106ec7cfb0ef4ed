"""The training loop: single process, or one process per GPU under ``torchrun`` (DistributedDataParallel).

One step (:func:`_step`): draw t and ε for the global batch (:mod:`.draws`), form x_t = q_sample(x_0, t, ε)
**with that ε**, minimise ‖target − net(x_t, t)‖² (the :class:`~ddpm.losses.Objective`), clip the gradient, take
an AdamW step at the scheduled learning rate and update the EMA. Around it, :func:`_report` logs, and
:func:`_periodic` writes grids, scores and checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from ..checkpoint import (
    CHECKPOINT_DIR,
    checkpoint_bytes,
    checkpoint_meta,
    checkpoint_name,
    list_checkpoints,
    save_checkpoint,
    save_training_state,
    state_path,
)
from ..data.dataset import ImageDataset
from ..denoiser import conditioned
from ..errors import ParameterError
from ..files import DiskFullError, disk_full, free_bytes
from ..losses import Objective
from ..runtime import Dist, setup_processes
from ..schedule import Schedule
from ..seeding import mix
from ..unet import UNet, check_labels
from .augment import parse_ops
from .batches import Augmentation, TrainingSet, training_set
from .config import TrainConfig
from .draws import Draws, batch_indices, step_draws
from .eval_hook import BestCheckpoint, TrainingEval
from .fit import duration, fit_run, shrunk_grid, time_line
from .log import MetricsLog, progress_bar, write_grid
from .schedules import HORIZON_AFTER, budget_horizon, ema_decay_at, ema_update, lr_at
from .setup import Networks, build_networks, prepare_run_dir, run_dir_lock

DEFAULT_STEPS = 5000  # without --steps or --minutes
ESTIMATE_AFTER = (20, 30.0)  # the run's time is estimated after this many steps or seconds, whichever comes first


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
        with run_dir_lock(Path(cfg.out), cfg.resume) if px.main else contextlib.nullcontext():
            return _train(cfg, px)
    finally:
        if px.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class _Run:
    """What the loop reads: the config, this process, the data, the objective, the networks and the logs."""

    cfg: TrainConfig
    px: Dist
    out: Path
    items: TrainingSet
    schedule: Schedule
    objective: Objective
    nets: Networks
    metrics: MetricsLog | None
    evaluator: TrainingEval | None
    checkpoint_size: int | None = None  # bytes of the last checkpoint written (state and weights)
    best: BestCheckpoint | None = None  # the best --eval-every score and its checkpoint
    stopping: str | None = None  # why the run stops early (--early-stop), said at the end

    @property
    def data(self) -> ImageDataset:
        """The images the run learns (the targets of a paired task)."""
        return self.items.data

    def save(self, step: int) -> Path:
        """Write checkpoint ``step`` (its state file first) and drop all but the newest cfg.keep.

        Where the disk cannot hold it, nothing is written (a write that fails part-way leaves no half of a
        checkpoint) and a DiskFullError names the space needed and the checkpoint a --resume continues from."""
        cfg, nets = self.cfg, self.nets
        path = self.out / CHECKPOINT_DIR / checkpoint_name(step)
        need = self.checkpoint_size or checkpoint_bytes(nets.raw)
        if free_bytes(path.parent) < need:
            raise self._disk_full(path, need)
        state = {"step": step, "optimizer": nets.opt.state_dict()}
        if self.objective.history is not None:
            state["loss_history"] = self.objective.history.state_dict()
        meta = self.meta(step)
        try:
            # The state file first: a checkpoint name that exists always has its state beside it.
            save_training_state(state_path(path), state)
            save_checkpoint(path, nets.raw.state_dict(), nets.ema.state_dict(), meta)
        except DiskFullError:
            state_path(path).unlink(missing_ok=True)  # no state file without its checkpoint
            raise self._disk_full(path, need) from None
        self.checkpoint_size = path.stat().st_size + state_path(path).stat().st_size
        for _, old in list_checkpoints(self.out)[: -cfg.keep]:
            old.unlink(missing_ok=True)
            state_path(old).unlink(missing_ok=True)
        return path

    def meta(self, step: int, **extra: Any) -> dict[str, Any]:
        """The metadata of a checkpoint of ``step`` (:func:`ddpm.checkpoint.checkpoint_meta`), with ``extra``."""
        cfg, nets, data = self.cfg, self.nets, self.data
        condition = {} if self.items.spec is None else {"condition": self.items.spec.to_dict()}
        return checkpoint_meta(step, nets.raw.config, self.schedule, cfg.prediction, variance=cfg.variance,
                               class_names=data.class_names if cfg.class_cond else None, data=data.name,
                               world_size=self.px.world, bf16=bool(nets.bf16), train=cfg.record(), **condition,
                               **extra)  # fmt: skip

    def save_best(self, path: Path, step: int, value: float) -> None:
        """Write the weights of ``step`` as ``path`` (best.safetensors: for sampling, no training state), recording
        the eval score that made it the best."""
        record = {"eval": {"step": step, "metric": self.cfg.eval_metric, "value": value}}
        need = self.checkpoint_size or checkpoint_bytes(self.nets.raw)
        if free_bytes(path.parent) < need:
            raise self._disk_full(path, need)
        save_checkpoint(path, self.nets.raw.state_dict(), self.nets.ema.state_dict(), self.meta(step, **record))

    def _disk_full(self, path: Path, need: int) -> DiskFullError:
        """The one-line error of a checkpoint the disk cannot hold: the space, and where a --resume continues."""
        found = list_checkpoints(self.out)
        kept = f"checkpoint step {found[-1][0]} is kept, and --resume continues from it" if found else "no checkpoint"
        return disk_full(path, need, fix=f"free some space; {kept}")


def _items(cfg: TrainConfig, px: Dist, out: Path) -> TrainingSet:
    """The run's data, checked, and its directory made ready (rank 0, the others waiting)."""
    items = training_set(cfg, px)
    data = items.data
    if cfg.class_cond and data.labels is None:
        raise ParameterError(
            f"{{class_cond}} needs labels, but {cfg.data} has none: use class subfolders, "
            "an IDX label file, or drop {class_cond}"
        )
    if cfg.class_cond:
        assert data.labels is not None and data.num_classes is not None  # checked just above
        check_labels(data.labels, data.num_classes)  # once: the network checks only shapes
    if px.main:
        prepare_run_dir(out, cfg.resume)
        if data.skipped:
            print(f"skipped {len(data.skipped)} unreadable file(s) (--skip-bad): {', '.join(data.skipped[:5])}")
        if items.dropped:
            print(f"left out {len(items.dropped)} pair(s) whose partner could not be read (--skip-bad): "
                  f"{', '.join(items.dropped[:5])}")  # fmt: skip
    px.barrier()
    return items


def _train(cfg: TrainConfig, px: Dist) -> TrainResult:
    out = Path(cfg.out)
    items = _items(cfg, px, out)
    data = items.data
    schedule = cfg.make_schedule()
    objective = Objective.create(
        schedule,
        cfg.prediction,
        cfg.loss_weight,
        cfg.loss_gamma,
        cfg.t_sampling,
        cfg.laplace_loc,
        cfg.laplace_scale,
        px.device,
        stratified=cfg.t_stratified,
        loss_type=cfg.loss,
        variance=cfg.variance,
        vlb_weight=cfg.vlb_weight,
    )
    nets = build_networks(cfg, data, px, out, items.spec)
    if objective.history is not None and nets.state.get("loss_history") is not None:
        objective.history.load_state_dict(nets.state["loss_history"])
    fit = fit_run(cfg, nets.raw, px, nets.recorded, nets.bf16)
    nets.bf16, nets.raw.grad_checkpoint = fit.bf16, fit.grad_checkpoint
    # "auto" resolved, and how the step fits the machine: what the checkpoints record and a resume repeats
    cfg = dataclasses.replace(cfg, preset=nets.preset, micro_batch=fit.micro_batch, grad_checkpoint=fit.grad_checkpoint)
    for line in fit.lines if px.main else []:
        print(line)
    metrics = MetricsLog.open(cfg, out, nets.step) if px.main else None
    evaluator = None
    if metrics is not None and cfg.eval_every:
        evaluator = TrainingEval(cfg.eval_metric, cfg.eval_num, data, cfg.data, cfg.seed, cfg.sample_steps, px.device,
                                 progress=cfg.progress, items=items)  # fmt: skip
    run = _Run(cfg, px, out, items, schedule, objective, nets, metrics, evaluator)
    if evaluator is not None:
        run.best = BestCheckpoint.open(out, cfg.eval_metric, cfg.eval_every, cfg.early_stop)
    with stop_signals() as caught:
        step, skipped, last_path = _loop(run, caught)
    if px.main:
        last_path = _finish(run, step, last_path)
        _say_why_it_stopped(cfg, step, caught, skipped, run.stopping)
    px.barrier()
    return TrainResult(
        last_path or out / CHECKPOINT_DIR / checkpoint_name(step), step, nets.raw, nets.ema, bool(caught)
    )


def _loop(run: _Run, caught: list[int]) -> tuple[int, int, Path | None]:
    """Optimise from run.nets.step until --steps, --minutes or a signal; returns (step, skipped, last checkpoint)."""
    cfg, px = run.cfg, run.px
    total = cfg.steps if cfg.steps is not None else (None if cfg.minutes is not None else DEFAULT_STEPS)
    deadline = time.monotonic() + cfg.minutes * 60 if cfg.minutes is not None else math.inf
    horizon = total  # the LR decay's end; a --minutes run measures it after HORIZON_AFTER steps
    labels = run.items.labels if cfg.class_cond else None
    step = start = run.nets.step
    report = _Report(start, time.monotonic(), progress_bar(total, step) if cfg.progress and px.main else None)
    run.nets.raw.train()
    try:
        while (total is None or step < total) and not px.any(
            bool(caught) or time.monotonic() >= deadline or run.stopping is not None
        ):
            stats = _step(run, step, horizon, labels)
            step += 1
            if stats is None:  # a non-finite step skipped (--nonfinite skip)
                report.skipped += 1
                continue
            elapsed = max(time.monotonic() - report.t_start, 1e-9)
            if horizon is None and cfg.lr_schedule != "constant" and step - start == HORIZON_AFTER:
                horizon = px.max_int(budget_horizon(step, (step - start) / elapsed, deadline - time.monotonic()))
            _report(run, report, step, stats, horizon, None if total is not None else deadline)
            if px.main and not report.estimated and (total is None or step < total):
                _estimate(run, report, step, total, deadline)
            report.last_path = _periodic(run, step) or report.last_path
    finally:
        if report.bar is not None:
            report.bar.close()
    return step, report.skipped, report.last_path


@dataclass
class _Stats:
    """One optimisation step's numbers for the log."""

    loss: float
    grad_norm: float
    ema_decay: float


def _step(run: _Run, step: int, horizon: int | None, labels: Tensor | None) -> _Stats | None:
    """Optimisation step ``step`` on this rank's share of the global batch; None when it was skipped.

    The global batch is batch-size x processes x grad-accum images, taken in passes of B = micro-batch images; pass a
    of rank r takes the slice [(a·W + r)·B, (a·W + r + 1)·B) of the step's draws, so W processes compute what one
    process with W× the batch would, and any split of the batch the same step up to float rounding.
    """
    cfg, px, nets, spec = run.cfg, run.px, run.nets, run.items.spec
    low = (spec.channels, spec.size, spec.size) if spec is not None and spec.told_level else None
    data = run.data
    d = step_draws(step, cfg.seed, len(run.items), cfg.batch_size * px.world * cfg.grad_accum,
                   (data.channels, data.image_size, data.image_size), run.objective, cfg.label_dropout, px.device,
                   cond_shape=low, cond_noise_max=cfg.cond_noise_max, augment=cfg.augment > 0)  # fmt: skip
    nets.opt.zero_grad(set_to_none=True)
    parts = [_micro_batch(run, step, a, d, labels) for a in range(cfg.passes)]
    loss = sum(value for value, _ in parts)
    gnorm = float(
        torch.nn.utils.clip_grad_norm_(nets.raw.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    )
    # Every rank takes part in the vote, so all skip (or stop at) the same step.
    if px.any(not (math.isfinite(gnorm) and math.isfinite(loss))):
        if cfg.nonfinite == "stop":
            raise ParameterError(
                f"the loss or gradient became non-finite at step {step} (loss {loss}): lower "
                f"{{lr}} (now {cfg.lr}) or turn off {{bf16}}, then {{resume}}; the checkpoints on "
                "disk are untouched (or pass {nonfinite} skip)"
            )
        nets.opt.zero_grad(set_to_none=True)
        return None
    if run.objective.history is not None:  # every rank records the global batch's losses, in its order
        per_image = px.gather(torch.stack([p for _, p in parts if p is not None]))  # (W, A, B): rank r's pass a
        run.objective.history.update(d.t.cpu(), per_image.transpose(0, 1).reshape(-1).cpu())
    for group in nets.opt.param_groups:
        group["lr"] = lr_at(step, cfg, horizon)
    nets.opt.step()
    decay = ema_decay_at(step, cfg.ema_decay)
    ema_update(nets.ema, nets.raw, decay)
    return _Stats(loss, gnorm, decay)


def _micro_batch(run: _Run, step: int, a: int, d: Draws, labels: Tensor | None) -> tuple[float, Tensor | None]:
    """Forward and backward of pass ``a`` of the step (gradients accumulate); returns its loss / passes and, for the
    loss-aware timestep sampler, each image's loss (B,)."""
    cfg, px, nets = run.cfg, run.px, run.nets
    B, W, A = cfg.micro_batch or cfg.batch_size, px.world, cfg.passes
    sl = slice((a * W + px.rank) * B, (a * W + px.rank + 1) * B)
    torch.manual_seed(mix(cfg.seed, step, px.rank, a))  # dropout masks
    # the step's items (the same as d.indices, on the CPU, where a prepared set's rows are gathered)
    indices = batch_indices(step, len(run.items), cfg.batch_size * W * cfg.grad_accum, cfg.seed)[sl]
    level = None if d.cond_level is None else d.cond_level[sl]
    noise = None if d.cond_noise is None else d.cond_noise[sl]
    aug = None if d.augment is None else Augmentation(d.augment[sl], cfg.augment, parse_ops(cfg.augment_ops))
    batch = run.items.batch(indices, d.flip[sl] if cfg.flip else None, level, noise, aug)  # x0 in [-1, 1]
    y = None if labels is None else torch.where(d.drop[sl], -1, labels[d.indices[sl]])
    model = conditioned(nets.model, batch.cond, level, batch.augment)
    x0 = batch.x0
    # DDP all-reduces gradients on the last micro-batch only.
    sync = contextlib.nullcontext() if (a == A - 1 or W == 1) else nets.model.no_sync()  # type: ignore[operator]
    with sync, torch.autocast(px.device.type, dtype=torch.bfloat16, enabled=bool(nets.bf16)):
        loss, per_image = run.objective.losses(model, x0, d.t[sl], d.noise[sl], y, nets.memory_format)
        (loss / A).backward()
    return loss.item() / A, per_image


@dataclass
class _Report:
    """The loop's running bookkeeping: smoothed loss, speed, skipped steps, the bar, the last checkpoint."""

    start_step: int
    t_start: float
    bar: Any
    smooth: float | None = None
    skipped: int = 0
    last_path: Path | None = None
    estimated: bool = False  # the run's time has been estimated and said

    def say(self, line: str) -> None:
        """One line for the user, above the progress bar where there is one."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line)


def _estimate(run: _Run, r: _Report, step: int, total: int | None, deadline: float) -> None:
    """Once enough steps have run (:data:`ESTIMATE_AFTER`), say how long a step takes here and how long the run
    takes; where the sample grids would cost more than :data:`GRID_SHARE` of it, shrink them and say so."""
    done, elapsed = step - r.start_step, time.monotonic() - r.t_start
    if done < ESTIMATE_AFTER[0] and elapsed < ESTIMATE_AFTER[1]:
        return
    r.estimated = True
    per_step = elapsed / done
    left = min(math.inf if total is None else (total - step) * per_step, deadline - time.monotonic())
    r.say(time_line(per_step, step, total, left))
    cfg = run.cfg
    images = cfg.batch_size * run.px.world * cfg.grad_accum
    # A sampling step costs about a third of a training step per image (no backward pass).
    per_grid_image = cfg.sample_steps * per_step / images / 3
    grids = 1 + (math.ceil(left / per_step) // cfg.sample_every if cfg.sample_every and math.isfinite(left) else 0)
    n = shrunk_grid(cfg.num_samples, per_grid_image * grids, left)
    if n < cfg.num_samples:
        cost = cfg.num_samples * per_grid_image
        r.say(f"grids: {n} images instead of {cfg.num_samples}, since {cfg.num_samples} would take about "
              f"{duration(cost)} each, more than a tenth of the run (ddpm sample draws more afterwards)")  # fmt: skip
        run.cfg = dataclasses.replace(cfg, num_samples=n)


def _report(run: _Run, r: _Report, step: int, stats: _Stats, horizon: int | None, deadline: float | None) -> None:
    """After step ``step``: the smoothed loss and images/s on the bar, and every --log-every steps a metrics line."""
    cfg = run.cfg
    r.smooth = stats.loss if r.smooth is None else 0.98 * r.smooth + 0.02 * stats.loss
    elapsed = max(time.monotonic() - r.t_start, 1e-9)
    rate = (step - r.start_step) * cfg.batch_size * run.px.world * cfg.grad_accum / elapsed
    if r.bar is not None:
        left = None if deadline is None else max(0.0, deadline - time.monotonic()) / 60
        r.bar.set_postfix(
            {"loss": f"{r.smooth:.4f}", "img/s": f"{rate:.0f}", **({} if left is None else {"left": f"{left:.1f}min"})},
            refresh=False,
        )
        r.bar.update(1)
    if run.metrics is not None and step % cfg.log_every == 0:
        run.metrics.write(
            {
                "step": step,
                "loss": stats.loss,
                "loss_smooth": r.smooth,
                "lr": lr_at(step - 1, cfg, horizon),
                "grad_norm": stats.grad_norm,
                "ema_decay": stats.ema_decay,
                "images_per_s": rate,
                "time_s": elapsed,
                "skipped_steps": r.skipped,
                "bf16": run.nets.bf16,
            }
        )


def _periodic(run: _Run, step: int) -> Path | None:
    """The every-K-steps work after ``step``: sample grid, --eval-every score, checkpoint (its path)."""
    cfg, px, out = run.cfg, run.px, run.out
    if run.metrics is not None and cfg.sample_every and step % cfg.sample_every == 0:  # rank 0
        grid = out / "samples" / f"step-{step:09d}.png"
        write_grid(grid, run.nets.ema, run.schedule, cfg, run.items, px.device, progress=cfg.progress)
        run.metrics.plot(out / "loss.png")
    if run.evaluator is not None and run.metrics is not None and step % cfg.eval_every == 0:
        result = run.evaluator(
            run.nets.ema, run.schedule, cfg.prediction, run.data.num_classes if cfg.class_cond else None, cfg.variance
        )
        run.metrics.write_eval(step, result, out / "eval.png")
        assert run.best is not None  # opened with the evaluator
        value = result[f"eval_{cfg.eval_metric}"]
        stop, line = run.best.update(step, value, lambda path: run.save_best(path, step, value))
        if stop:
            run.stopping = line
        elif line:
            tqdm.write(line)
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
        write_grid(final_grid, run.nets.ema, run.schedule, run.cfg, run.items, run.px.device, progress=run.cfg.progress)
    if run.metrics is not None:
        run.metrics.plot(run.out / "loss.png")
        if run.metrics.tb is not None:
            run.metrics.tb.close()
    return last_path


def _say_why_it_stopped(cfg: TrainConfig, step: int, caught: list[int], skipped: int, early: str | None) -> None:
    """One line each (rank 0): stopped by a signal, by --early-stop, by the --minutes budget; steps skipped."""
    if early is not None:
        print(early)
    elif caught:
        print(
            f"stopped by signal {signal.Signals(caught[0]).name} at step {step}; "
            f"checkpoint written, continue with --resume"
        )
    elif cfg.minutes is not None and cfg.steps is not None and step < cfg.steps:
        print(
            f"stopped at step {step} of {cfg.steps}: the --minutes {cfg.minutes:g} budget ran out; "
            "the same command with --resume continues"
        )
    if skipped:
        print(f"skipped {skipped} step(s) with a non-finite loss or gradient")


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
