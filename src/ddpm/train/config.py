"""``TrainConfig``: everything a training run depends on, saved in every checkpoint.

Each field is declared with :func:`ddpm.settings.option`: its help text becomes ``ddpm train``'s flag, ``resume=True``
marks the settings a resumed run must keep (they change the run's numbers), and ``unrecorded`` the value that a
checkpoint which does not record the field was trained with, where today's default differs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..conditioning import TASKS
from ..diffusion import PREDICTIONS
from ..errors import ParameterError, UserError
from ..losses import DEFAULT_VLB_WEIGHT, LOSS_WEIGHTS, T_SAMPLINGS, check_objective
from ..schedule import Schedule
from ..settings import marked, option
from ..unet import AUTO_PRESET, AUTO_PRESETS, PRESETS
from .augment import DEFAULT_OPS, parse_ops
from .augment import OPS as AUGMENT_OPS

LR_SCHEDULES = ("constant", "cosine", "linear")
PATIENCE = 3  # --eval-every evals without improvement before a run without --early-stop warns


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved in every checkpoint. CLI flags are derived from it."""

    out: str = option("run directory: checkpoints, sample grids and metrics go here", default="")
    data: str = option(
        "'digits', 'fashion-mnist', or a path to IDX files / CIFAR batches / an image folder",
        default="digits",
        resume=True,
    )
    resume: bool = option("continue the run in --out from its latest checkpoint, exactly", default=False)
    steps: int | None = option(
        "total optimisation steps, counting those before a resume (default 5000 when --minutes is not given)",
        default=None,
    )
    minutes: float | None = option("stop after this many minutes of training (and at --steps if given)", default=None)
    preset: str = option(
        f"network preset: {', '.join(PRESETS)}, or {AUTO_PRESET}: chosen from the image size and the device (on a "
        "CPU "
        + ", ".join(f"{cpu} up to {size} px" for size, cpu, _ in AUTO_PRESETS[:-1])
        + f", {AUTO_PRESETS[-1][1]} above; on a GPU "
        + ", ".join(f"{gpu} up to {size} px" for size, _, gpu in AUTO_PRESETS[:-1])
        + f", {AUTO_PRESETS[-1][2]} above; said at start; a resumed run keeps its own)",
        default=AUTO_PRESET,
        resume=True,
        unrecorded="tiny",
    )
    init_from: str | None = option(
        "start a new run from this checkpoint's weights, EMA and raw (a file or run "
        "directory, e.g. one made by `ddpm convert`); its network is used, not --preset",
        default=None,
        resume=True,
    )
    base_channels: int | None = option(
        "network width: channels of the first level (default: the preset's)", default=None, resume=True
    )
    channel_mult: str | None = option(
        "width multiplier of each resolution level, comma-separated, e.g. 1,2,2 (one "
        "level per entry; default: the preset's)",
        default=None,
        resume=True,
    )
    res_blocks: int | None = option(
        "residual blocks per resolution level (default: the preset's)", default=None, resume=True
    )
    attention: str | None = option(
        "feature-map sizes that get self-attention besides the middle block's, "
        "comma-separated, e.g. 7,8, or 'none' (default: the preset's)",
        default=None,
        resume=True,
    )
    norm_groups: int | None = option(
        "GroupNorm groups (fewer where a width is not divisible; default: the preset's, 32)", default=None, resume=True
    )
    scale_shift_norm: bool | None = option(
        "residual blocks take the time embedding as a scale and shift of their "
        "second GroupNorm (adaptive GroupNorm) instead of an addend (default: "
        "the preset's)",
        default=None,
        resume=True,
    )
    image_size: int | None = option(
        "resize/crop images to this size (default: the data's own size)", default=None, resume=True
    )
    task: str = option(
        "what the network learns: generate (images from noise), super-resolution (an image given its view --scale "
        "times smaller) or paired (a target given its input from --condition-data: restoration, colourisation)",
        default="generate",
        choices=TASKS,
        resume=True,
    )
    scale: int | None = option(
        "with --task super-resolution: how many times smaller the low-resolution view is (the image size divided by "
        "it is the low size)",
        default=None,
        resume=True,
    )
    condition_data: str | None = option(
        "a folder of inputs paired with --data's targets by relative path (the same name, any image extension): "
        "trains p(target | input) (--task paired)",
        default=None,
        resume=True,
        metavar="INPUTS",
    )
    cond_noise_max: float = option(
        "conditioning augmentation of --task super-resolution (Ho et al. 2021): the low image is corrupted as "
        "sqrt(1-a) low + sqrt(a) noise with a drawn per image from [0, this], and the network is told a (0: off)",
        default=0.1,
        resume=True,
    )
    skip_bad: bool = option("skip image files that cannot be read instead of stopping", default=False)
    prepared_dir: str | None = option(
        "where to keep the prepared copy of an image folder (default: .ddpm inside "
        "the folder, else the cache, $DDPM_CACHE or ~/.cache/ddpm)",
        default=None,
    )
    flip: bool = option("random horizontal flips of the training images", default=False, resume=True)
    augment: float = option(
        "non-leaking augmentation (Karras et al. 2022): each of --augment-ops is applied to a training image with "
        "this probability, and the network is told which (sampling tells it none, so samples are not augmented); "
        "0: off",
        default=0.0,
        resume=True,
        metavar="P",
    )
    augment_ops: str = option(
        f"the augmentations of --augment, comma-separated, of {', '.join(AUGMENT_OPS)} (default: EDM's CIFAR-10 "
        f"set, {DEFAULT_OPS})",
        default=DEFAULT_OPS,
        resume=True,
        metavar="OPS",
    )
    class_cond: bool = option(
        "condition on the dataset's labels (for classifier-free guidance)", default=False, resume=True
    )
    label_dropout: float = option(
        "with --class-cond, the share of labels dropped to 'no label'", default=0.1, resume=True
    )
    batch_size: int = option("images per optimisation step per process", default=64, resume=True)
    grad_accum: int = option(
        "micro-batches per step: effective batch = batch-size x processes x grad-accum "
        "(the same step in 1/grad-accum of the activation memory)",
        default=1,
        resume=True,
    )
    micro_batch: int | None = option(
        "images per forward and backward pass of each process, a divisor of --batch-size: the same step in passes of "
        "this many, in less memory (default: the whole batch, or the largest divisor whose step fits in this "
        "machine's memory, said at start; a resumed run keeps its own)",
        default=None,
        resume=True,
    )
    grad_checkpoint: bool | None = option(
        "recompute each residual and attention block's activations in the backward pass instead of keeping them: the "
        "same loss and gradients in a fraction of the activation memory, for a second forward pass of those blocks "
        "(default: off, on where a step does not fit in memory otherwise; a resumed run keeps its own)",
        default=None,
    )
    lr: float = option("AdamW learning rate after warm-up", default=1e-3, resume=True)
    warmup: int = option("linear learning-rate warm-up steps", default=200, resume=True)
    lr_schedule: str = option(
        "after warm-up: 'constant', or 'cosine'/'linear' decay to 0 at --steps (with --minutes "
        "alone: at the step the measured speed reaches by the deadline)",
        default="constant",
        resume=True,
    )
    loss_weight: str = option(
        "per-timestep loss weight: 'none' (plain MSE), 'min-snr' (min(SNR, gamma) on the x0 "
        "error, Hang et al. 2023) or 'p2' (1/(1+SNR)^gamma on the eps error, Choi et al. 2022)",
        default="none",
        resume=True,
    )
    loss_gamma: float | None = option(
        "gamma of --loss-weight (default: 5 for min-snr, 1 for p2)", default=None, resume=True
    )
    t_stratified: bool = option(
        "stratified timesteps: the batch's draws of u in [0, 1) are one random shift of "
        "0, 1/B, ..., (B-1)/B, shuffled, so every batch covers the t-range evenly (each draw "
        "keeps its density)",
        default=True,
        resume=True,
        unrecorded=False,
    )
    t_sampling: str = option(
        "how training timesteps are drawn: 'uniform', 'laplace' (log-SNR ~ "
        "Laplace(--laplace-loc, --laplace-scale), Hang et al. 2024) or 'importance' (with --loss "
        "vlb/hybrid: p_t from the history of each t's loss, improved DDPM)",
        default="uniform",
        resume=True,
    )
    laplace_loc: float = option("centre of the Laplace density on log-SNR", default=0.0, resume=True)
    laplace_scale: float = option("scale of the Laplace density on log-SNR", default=0.5, resume=True)
    weight_decay: float = option("AdamW weight decay", default=0.0, resume=True)
    adam_beta2: float = option(
        "AdamW beta2, the decay of the squared-gradient average", default=0.99, resume=True, unrecorded=0.999
    )
    grad_clip: float = option("clip the gradient norm to this value (0: off)", default=1.0, resume=True)
    ema_decay: float = option(
        "EMA decay of the weights (warmed up as min(decay, (1+n)/(10+n)))", default=0.999, resume=True
    )
    seed: int = option("seed of every random draw of the run", default=0, resume=True)
    timesteps: int = option("diffusion steps T", default=1000, resume=True)
    schedule: str = option("beta schedule: linear or cosine", default="linear", resume=True)
    beta_start: float = option("first beta of the linear schedule", default=1e-4, resume=True)
    beta_end: float = option("last beta of the linear schedule", default=0.02, resume=True)
    prediction: str = option(
        "what the network predicts: eps, x0, v or mean (the posterior mean, the DDPM paper's baseline)",
        default="eps",
        resume=True,
    )
    variance: str = option(
        "the reverse process's variance: fixed-small (beta-tilde), fixed-large (beta), learned "
        "(the network predicts log sigma^2) or learned-range (it interpolates beta-tilde and beta, "
        "improved DDPM); learned ones double the network's output channels and need --loss hybrid "
        "or vlb",
        default="fixed-small",
        resume=True,
    )
    loss: str = option(
        "training objective: simple (MSE of the prediction, DDPM's L_simple), vlb (the true "
        "variational bound) or hybrid (simple + --vlb-weight x the bound, which then trains only the "
        "variance; improved DDPM)",
        default="simple",
        resume=True,
    )
    vlb_weight: float = option("lambda of --loss hybrid", default=DEFAULT_VLB_WEIGHT, resume=True)
    dropout: float | None = option("dropout in residual blocks (default: the preset's)", default=None, resume=True)
    nonfinite: str = option(
        "on a NaN/inf loss or gradient: 'stop' (no checkpoint is written) or 'skip' the step", default="stop"
    )
    sample_every: int = option(
        "write a sample grid (EMA weights) every this many steps (0: only at the end)", default=1000
    )
    sample_steps: int = option("steps of the default sampler for the grids written during training", default=20)
    num_samples: int = option("images in each sample grid", default=64)
    checkpoint_every: int = option("write a checkpoint every this many steps (0: only at the end)", default=1000)
    keep: int = option("checkpoints to keep (the newest)", default=3)
    log_every: int = option("append a metrics line to metrics.jsonl every this many steps", default=50)
    tensorboard: bool = option("also write TensorBoard events (needs the tensorboard package)", default=False)
    eval_every: int = option(
        "score --eval-num EMA samples against the train split every this many steps, into "
        "metrics.jsonl and eval.png (0: off)",
        default=0,
    )
    eval_num: int = option("images sampled for each --eval-every score", default=500)
    eval_metric: str = option(
        "--eval-every metric: fd (FeatureNet, seconds on a CPU) or fid (Inception-v3)", default="fd"
    )
    early_stop: int | None = option(
        "with --eval-every: stop once the metric has not improved for this many evals (best.safetensors keeps the "
        f"best); without it a run warns once after {PATIENCE}",
        default=None,
        metavar="N",
    )
    device: str = option("cpu, cuda, mps or auto", default="auto")
    bf16: bool | None = option(
        "bf16 autocast for the network (default: on a CPU with bf16 instructions, whichever of bf16 and float32 a "
        "few timed steps of this network find faster, once per CPU model and network; on CUDA GPUs that support "
        "it; on resume, the run's own choice)",
        default=None,
    )
    compile: bool = option("torch.compile the network", default=False)
    channels_last: bool | None = option("channels-last memory format (default: on for CUDA)", default=None)
    progress: bool = option("no progress bar", default=True, flag="--quiet", action="store_false")

    def validate(self) -> None:
        """Raise a ParameterError (a UserError) naming the first bad setting."""
        if not self.out:
            raise ParameterError("{out} is required: the run directory to write checkpoints and samples into")
        if self.condition_data is not None and self.task == "generate":
            self.task = "paired"  # --condition-data alone means a paired task
        self._validate_task()
        self._validate_choices()
        self._validate_numbers()
        if self.network_overrides() and self.init_from is not None:  # also raises on a malformed list
            raise ParameterError(
                "{init_from} keeps its checkpoint's network: drop {base_channels}, {channel_mult}, "
                "{res_blocks} and {attention}"
            )

    def _validate_task(self) -> None:
        """A task and the settings it needs: a scale for super-resolution, the inputs folder for paired data."""
        if self.task not in TASKS:
            raise ParameterError(f"unknown {{task}} {self.task!r}: choose one of {', '.join(TASKS)}")
        if (self.task == "super-resolution") != (self.scale is not None):
            raise ParameterError("{task} super-resolution needs {scale} N (and only it takes one), e.g. {scale} 2")
        if self.scale is not None and self.scale < 2:
            raise ParameterError(f"{{scale}} must be at least 2; got {self.scale}")
        if (self.task == "paired") != (self.condition_data is not None):
            raise ParameterError("{task} paired goes with {condition_data} INPUTS (a folder paired with {data})")
        if not 0 <= self.cond_noise_max < 1:
            raise ParameterError(f"{{cond_noise_max}} must lie in [0, 1); got {self.cond_noise_max}")

    def _validate_choices(self) -> None:
        """The settings that name one of a few choices, and the objective they make together."""
        if self.preset not in PRESETS and self.preset != AUTO_PRESET:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}, or {AUTO_PRESET}")
        if self.prediction not in PREDICTIONS:
            raise UserError(f"unknown prediction {self.prediction!r}: choose one of {', '.join(PREDICTIONS)}")
        if self.schedule not in ("linear", "cosine"):
            raise UserError(f"unknown schedule {self.schedule!r}: choose linear or cosine")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ParameterError(
                f"unknown {{lr_schedule}} {self.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}"
            )
        if self.loss_weight not in LOSS_WEIGHTS:
            raise ParameterError(
                f"unknown {{loss_weight}} {self.loss_weight!r}: choose one of {', '.join(LOSS_WEIGHTS)}"
            )
        if self.t_sampling not in T_SAMPLINGS:
            raise ParameterError(f"unknown {{t_sampling}} {self.t_sampling!r}: choose one of {', '.join(T_SAMPLINGS)}")
        check_objective(self.loss, self.variance, self.t_sampling, self.loss_weight, self.vlb_weight)
        if self.nonfinite not in ("stop", "skip"):
            raise ParameterError(f"{{nonfinite}} must be 'stop' or 'skip'; got {self.nonfinite!r}")
        if self.eval_metric not in ("fd", "fid"):
            raise ParameterError(f"{{eval_metric}} must be fd or fid; got {self.eval_metric!r}")

    def _validate_numbers(self) -> None:
        """The numeric settings' ranges."""
        if not (math.isfinite(self.adam_beta2) and 0 <= self.adam_beta2 < 1):
            raise ParameterError(f"{{adam_beta2}} must be in [0, 1), e.g. 0.999 or 0.99; got {self.adam_beta2}")
        if self.loss_gamma is not None and not (math.isfinite(self.loss_gamma) and self.loss_gamma > 0):
            raise ParameterError(f"{{loss_gamma}} must be a positive number; got {self.loss_gamma}")
        if not (math.isfinite(self.laplace_scale) and self.laplace_scale > 0) or not math.isfinite(self.laplace_loc):
            raise ParameterError(
                f"{{laplace_scale}} must be positive and {{laplace_loc}} finite; got "
                f"{self.laplace_scale}, {self.laplace_loc}"
            )
        for name in ("batch_size", "grad_accum", "timesteps", "num_samples", "sample_steps", "keep", "log_every"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{{{name}}} must be at least 1; got {getattr(self, name)}")
        if self.micro_batch is not None and (self.micro_batch < 1 or self.batch_size % self.micro_batch):
            raise ParameterError(
                f"{{micro_batch}} must divide {{batch_size}} {self.batch_size}; got {self.micro_batch}"
            )
        for name in ("sample_every", "checkpoint_every", "warmup"):
            if getattr(self, name) < 0:
                raise ParameterError(f"{{{name}}} must be >= 0; got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ParameterError(f"{{steps}} must be at least 1; got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise ParameterError(f"{{minutes}} must be positive; got {self.minutes}")
        if not 0 < self.lr < 1:
            raise ParameterError(f"{{lr}} must lie in (0, 1); got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ParameterError(f"{{ema_decay}} must lie in [0, 1); got {self.ema_decay}")
        if not 0 <= self.label_dropout < 1:
            raise ParameterError(f"{{label_dropout}} must lie in [0, 1); got {self.label_dropout}")
        if self.eval_every < 0 or self.eval_num < 2:
            raise ParameterError(
                f"{{eval_every}} must be >= 0 and {{eval_num}} >= 2; got {self.eval_every}, {self.eval_num}"
            )
        if self.early_stop is not None and (self.early_stop < 1 or not self.eval_every):
            raise ParameterError(f"{{early_stop}} counts --eval-every evals: it needs {{eval_every}} K and a count of "
                                 f"at least 1; got {self.early_stop}")  # fmt: skip
        self._validate_augment()

    def _validate_augment(self) -> None:
        """The augmentation's probability and operations; a paired task refuses it (its inputs would need the same
        transforms)."""
        if not 0 <= self.augment <= 1:
            raise ParameterError(f"{{augment}} is a probability in [0, 1]; got {self.augment}")
        try:
            parse_ops(self.augment_ops)
        except ValueError as e:
            raise ParameterError(f"{{augment_ops}}: {e}") from None
        if self.augment > 0 and self.task == "paired":
            raise ParameterError("{augment} is not applied to paired data (its inputs would need the same "
                                 "transforms): drop {augment}, or use {flip}")  # fmt: skip

    @property
    def passes(self) -> int:
        """Forward and backward passes per step and process: grad-accum x the micro-batches of one batch."""
        return self.grad_accum * (self.batch_size // (self.micro_batch or self.batch_size))

    def network_overrides(self) -> dict[str, Any]:
        """The UNetConfig fields that --base-channels, --channel-mult, --res-blocks, --attention, --norm-groups and
        --scale-shift-norm set."""
        out: dict[str, Any] = {}
        for setting, value, name in (
            ("base_channels", self.base_channels, "base_channels"),
            ("res_blocks", self.res_blocks, "num_res_blocks"),
            ("norm_groups", self.norm_groups, "groups"),
        ):
            if value is not None:
                if value < 1:
                    raise ParameterError(f"{{{setting}}} must be at least 1; got {value}")
                out[name] = value
        if self.channel_mult is not None:
            out["channel_mult"] = _int_list("channel_mult", self.channel_mult, "e.g. 1,2,2")
            if not out["channel_mult"]:
                raise ParameterError("{channel_mult} needs at least one level, e.g. 1,2,2")
        if self.attention is not None:
            spec = self.attention.strip().lower()
            out["attention_resolutions"] = () if spec == "none" else _int_list("attention", spec, "e.g. 7 or none")
        if self.scale_shift_norm is not None:
            out["scale_shift_norm"] = self.scale_shift_norm
        return out

    def record(self) -> dict[str, Any]:
        """The settings as JSON-ready values, as a checkpoint records them (``progress`` only decides what is shown)."""
        return {k: v for k, v in asdict(self).items() if k != "progress"}

    def make_schedule(self) -> Schedule:
        """The run's noise schedule (float64 tables), from --schedule, --timesteps and the linear betas."""
        try:
            if self.schedule == "cosine":
                return Schedule.cosine(self.timesteps)
            return Schedule.linear(self.timesteps, self.beta_start, self.beta_end)
        except ValueError as e:
            raise UserError(str(e)) from None


# The settings a resumed run must keep, and the values a checkpoint that does not record a field was trained with.
RESUME_MUST_MATCH: tuple[str, ...] = marked(fields(TrainConfig), "resume")
UNRECORDED_VALUES: dict[str, Any] = {
    f.name: f.metadata["unrecorded"] for f in fields(TrainConfig) if "unrecorded" in f.metadata
}


def _int_list(setting: str, text: str, example: str) -> tuple[int, ...]:
    """'1,2,2' -> (1, 2, 2): positive integers, or a ParameterError naming ``setting``."""
    parts = [v.strip() for v in text.split(",") if v.strip()]
    if not all(v.isdigit() and int(v) >= 1 for v in parts):
        raise ParameterError(f"{{{setting}}} takes comma-separated positive integers ({example}); got {text!r}")
    return tuple(int(v) for v in parts)
