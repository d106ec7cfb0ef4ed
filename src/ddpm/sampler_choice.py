"""Which sampler a command runs: :class:`SamplerChoice`, the measured defaults, and the sampling settings that
``ddpm sample``, ``ddpm edit`` and ``ddpm eval`` share (:class:`SampleSettings`, declared once).

:func:`choose_sampler` fills a user's partial choice in with the defaults and types its options; :func:`check_sampler`
validates it by a dry run before any real work. :func:`ddpm.sample`'s own defaults are the package contract's
(ancestral DDPM, every step) and are not these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .denoiser import Denoised
from .errors import ParameterError, UserError
from .sampling import SAMPLERS, sampler_options
from .schedule import SPACINGS, Schedule, spaced_timesteps
from .settings import option


@dataclass(frozen=True)
class SamplerChoice:
    """A sampler with its path: name, spacing, steps and sampler options (``eta`` included where it has one)."""

    name: str
    spacing: str
    steps: int
    options: dict[str, Any] = field(default_factory=dict)


# The most accurate deterministic path on the Gaussian oracle, for --interpolate and the oracle targets
# (benchmarks/samplers.py; BENCHMARKS.md, "samplers.py").
DETERMINISTIC_SAMPLER = SamplerChoice("unipc", "info", 10)
# The best FD on a network trained on a CPU, whose errors noise keeps correcting where the ODE carries them
# (benchmarks/samplers_model.py and sampler_fid.py; BENCHMARKS.md, "samplers_model.py" and "sampler_fid.py").
DEFAULT_SAMPLER = SamplerChoice("sa-solver", "logsnr", 20)


def parse_options(pairs: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> {key: value text} (a mapping is returned as a dict); :func:`choose_sampler` types
    the values."""
    if isinstance(pairs, Mapping):
        return dict(pairs)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ParameterError(
                f"{{options}} {pair!r} is not KEY=VALUE: write e.g. {{options}} lower_order_final=true"
            )
        out[key.strip().replace("-", "_")] = value
    return out


def typed_option(key: str, value: Any, default: Any) -> Any:
    """An option value given as text ("true", "3") -> the type of the sampler's default; other values as given."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if isinstance(default, bool):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ParameterError(f"{{options}} {key}={value}: expected true or false")
    if isinstance(default, (int, float)):
        try:
            return type(default)(value)
        except ValueError:
            kind = "n integer" if isinstance(default, int) else " number"
            raise ParameterError(f"{{options}} {key}={value}: expected a{kind}") from None
    return value


def _eta_option(name: str, accepted: dict[str, Any], eta: float | None) -> dict[str, float]:
    """The ``eta`` entry of a sampler's options: the given noise level, or the sampler's default; none for a sampler
    without one (where giving it is an error)."""
    if "eta" in accepted:
        value = float(accepted["eta"]) if eta is None else float(eta)
        if not 0.0 <= value <= 1.0:
            raise ParameterError(f"{{eta}} must lie in [0, 1] (0 deterministic, 1 like DDPM); got {eta}")
        return {"eta": value}
    if eta is not None:
        with_eta = ", ".join(n for n in SAMPLERS if "eta" in sampler_options(n))
        raise ParameterError(
            f"{{eta}} is a noise level and sampler {name!r} has none: drop {{eta}} or pick one of {with_eta}"
        )
    return {}


def choose_sampler(
    timesteps: int,
    *,
    sampler: str | None = None,
    spacing: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    options: Mapping[str, Any] | None = None,
    deterministic: bool = False,
) -> SamplerChoice:
    """The sampler path asked for, with the measured defaults (:data:`DEFAULT_SAMPLER`; :data:`DETERMINISTIC_SAMPLER`
    when ``deterministic`` and no ``sampler`` is given) filled in for a schedule of ``timesteps`` steps.

    ``options`` are the sampler's options except ``eta`` (see :func:`ddpm.sampler_options`); values given as
    text are converted to the type of the option's default.
    """
    default = DETERMINISTIC_SAMPLER if deterministic and sampler is None else DEFAULT_SAMPLER
    name = sampler or default.name
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    steps = min(default.steps, timesteps) if steps is None else steps
    if not 1 <= steps <= timesteps:
        raise ParameterError(f"{{steps}} must lie in 1..{timesteps} (the checkpoint's T); got {steps}")
    accepted = sampler_options(name)
    chosen: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key == "eta":
            raise ParameterError("set eta with {eta}, not {options}")
        if key not in accepted:
            raise UserError(
                f"sampler {name!r} has no option {key!r}; its options: "
                f"{', '.join(k for k in accepted if k != 'eta') or 'none'}"
            )
        chosen[key] = typed_option(key, value, accepted[key])
    chosen.update(_eta_option(name, accepted, eta))
    return SamplerChoice(name, spacing or default.spacing, steps, chosen)


def check_sampler(choice: SamplerChoice, schedule: Schedule) -> bool:
    """Validate the options by a dry run on a 1-pixel dummy; True when the sampler draws no noise."""
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    try:
        timesteps = spaced_timesteps(schedule, choice.steps, choice.spacing)
        SAMPLERS[choice.name](
            lambda x, t: Denoised(torch.zeros_like(x), x, torch.zeros_like(x), "learned-range"),
            torch.zeros(1, 1, 1, 1),
            schedule,
            timesteps,
            g,
            None,
            **choice.options,
        )
    except (ValueError, TypeError) as e:
        raise ParameterError(
            f"sampler {choice.name!r} refuses these settings ({e}): fix {{options}}/{{eta}}/{{steps}}"
        ) from None
    return torch.equal(g.get_state(), before)


def _options_listing() -> str:
    """Every sampler's options but eta, with their defaults: "ddpm: variance=posterior, ...; unipc: ..."."""
    listed = "; ".join(
        f"{n}: " + ", ".join(f"{k}={v}" for k, v in opts.items())
        for n in SAMPLERS
        if (opts := {k: v for k, v in sampler_options(n).items() if k != "eta"})
    )
    return listed or "none"


@dataclass
class SampleSettings:
    """How a command samples a checkpoint: the flags ``ddpm sample``, ``ddpm edit`` and ``ddpm eval`` share.

    Unset fields (None) take the measured defaults (:data:`DEFAULT_SAMPLER`) when :func:`choose_sampler` fills
    them in; ``label`` is a class index or name, ``options`` the sampler's options (name -> value or text)."""

    checkpoint: str | None = option("a .safetensors checkpoint, or a run directory (its latest)", default=None)
    sampler: str | None = option(
        f"sampler (default: {DEFAULT_SAMPLER.name}, chosen by measurement)", default=None, choices=tuple(SAMPLERS)
    )
    spacing: str | None = option(
        f"how the sampling steps are spread over the T training steps (default: {DEFAULT_SAMPLER.spacing})",
        default=None,
        choices=tuple(SPACINGS),
    )
    steps: int | None = option(
        f"sampling steps (default: {DEFAULT_SAMPLER.steps}, for every sampler, capped at T; "
        "an edit uses those below round(strength*(T-1)))",
        default=None,
    )
    eta: float | None = option(
        "noise level in [0, 1] of ddim (default 0), dpmpp-2m-sde and sa-solver (default 1): "
        "0 deterministic (the probability-flow ODE), 1 as random as DDPM (the reverse SDE)",
        default=None,
    )
    options: dict[str, Any] = option(
        "a sampler-specific option, repeatable (option=default): " + _options_listing(),
        default_factory=dict,
        flag="--option",
        action="append",
        metavar="KEY=VALUE",
        convert=parse_options,
    )
    label: int | str | None = option(
        "class index or name, for a model trained with --class-cond", default=None, flag="--class", metavar="C"
    )
    guidance: float | None = option(
        "classifier-free guidance weight with --class (0: unconditional, 1: conditional, >1: stronger; default 1)",
        default=None,
        metavar="W",
    )
    ema: bool = option(
        "use the raw weights instead of the EMA weights", default=True, flag="--no-ema", action="store_false"
    )
    clip_x0: bool = option(
        "do not clip the predicted x0 to [-1, 1]", default=True, flag="--no-clip", action="store_false"
    )
    device: str = option("cpu, cuda, mps or auto (default: auto)", default="auto")
    overwrite: bool = option("replace files that are already there", default=False, action="store_true")

    def choice(self, timesteps: int, deterministic: bool = False) -> SamplerChoice:
        """The sampler path these settings ask for on a schedule of ``timesteps`` steps (see :func:`choose_sampler`)."""
        return choose_sampler(
            timesteps,
            sampler=self.sampler,
            spacing=self.spacing,
            steps=self.steps,
            eta=self.eta,
            options=parse_options(self.options),
            deterministic=deterministic,
        )

    def sampler_flags_given(self) -> list[str]:
        """The settings of the sampler path that differ from "not given", by name (for commands that refuse them)."""
        unset = SampleSettings()
        return [
            name
            for name in ("sampler", "spacing", "steps", "eta", "options", "label", "guidance", "ema", "clip_x0")
            if getattr(self, name) != getattr(unset, name)
        ]
