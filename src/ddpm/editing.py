"""Editing real images with a trained model: SDEdit and inpainting (optionally with RePaint resampling).

- **SDEdit** (Meng et al. 2022): noise the image to index t0 = round(s·(T−1)) with the forward process and
  run a sampler from there. ``strength`` s = 0 keeps the image, s = 1 starts from (nearly) pure noise.
- **Inpainting**: a boolean mask (True = regenerate) splits the pixels. Before every model call the known
  pixels are replaced by a fresh draw of the forward process q(x_t | x_0 = image), so the model always
  sees a consistent x_t; the output takes the known pixels exactly from the input.
- **RePaint** (Lugmayr et al. 2022, Algorithm 1): with ``resample`` R > 1, after each ancestral step the
  chain jumps back one step with q(x_t | x_{t−1}) and redoes it, R times, so the generated pixels get
  several chances to agree with the known ones.

Images are float tensors (B, C, H, W) in [-1, 1]; masks are bool, broadcastable to the images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .denoiser import Callback, Denoiser, Generators, make_denoiser, randn
from .diffusion import q_sample
from .errors import ParameterError, UserError
from .sampler_choice import DEFAULT_SAMPLER
from .sampling import SAMPLERS
from .schedule import Schedule, posterior_coefficients, spaced_timesteps


def edit_timesteps(schedule: Schedule, strength: float, steps: int, spacing: str) -> Tensor:
    """The indices an edit of ``strength`` s samples over: LongTensor (K,), decreasing, ending at 0.

    t0 = round(s·(T−1)) comes first, followed by the indices of ``spaced_timesteps(schedule, steps, spacing)``
    below t0. t0 is put in front even when the spacing skips it: the image is noised to exactly t0, and the
    first model call must be told that noise level.
    """
    check_strength(strength)
    t0 = round(float(strength) * (schedule.timesteps - 1))
    full = spaced_timesteps(schedule, steps, spacing)
    return torch.cat([torch.tensor([t0], dtype=torch.long), full[full < t0]])


def check_strength(strength: float) -> None:
    """Raise a ParameterError naming ``strength`` unless 0 <= strength <= 1."""
    if not 0.0 <= float(strength) <= 1.0:
        raise ParameterError(
            f"{{strength}} must lie in [0, 1] (0 keeps the image, 1 regenerates it fully); got {strength}"
        )


def _check_resample(resample: int) -> None:
    """Raise a ParameterError naming ``resample`` unless RePaint's R is at least 1."""
    if int(resample) < 1:
        raise ParameterError(f"{{resample}} must be at least 1 (1 = no resampling); got {resample}")


def inpainting_denoiser(
    denoise: Denoiser, image: Tensor, mask: Tensor, schedule: Schedule, generator: Generators = None
) -> Denoiser:
    """Wrap ``denoise(x, t)`` so that the model sees the known pixels (mask False) drawn from q(x_t | image).

    image: (B, C, H, W); mask: bool, broadcastable to it, True = regenerate. Every call draws fresh noise
    from ``generator``. Samplers update x elementwise, so the pixels to regenerate evolve exactly as if
    the sampler's own x had been overwritten; the known pixels of its x are never used.
    """

    def wrapped(x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        known = q_sample(image, tt, randn(x.shape, generator, x.device, x.dtype), schedule)
        return denoise(torch.where(mask, x, known), t)

    return wrapped


def repaint(
    denoise: Denoiser,
    x: Tensor,
    image: Tensor,
    mask: Tensor,
    schedule: Schedule,
    timesteps: Tensor,
    generator: Generators = None,
    resample: int = 1,
    callback: Callback = None,
) -> Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1) with the ancestral DDPM step, on any decreasing ``timesteps``.

    x: (B, C, H, W) noisy start at ``timesteps[0]``; image: (B, C, H, W) the picture to complete; mask: bool
    broadcastable to x, True = regenerate. Returns (B, C, H, W) whose known pixels are the model's final
    estimate there (the caller takes them from ``image``). ``resample=1`` is plain ancestral sampling with
    the known pixels re-imposed before every model call (the same draws, in the same order, as
    ``sample_ddpm`` with :func:`inpainting_denoiser`).
    """
    _check_resample(resample)
    ab = schedule.alphas_cumprod.tolist()
    ts = [int(t) for t in timesteps.tolist()]
    n = 0
    for i, t in enumerate(ts):
        # (0) The respaced chain's step t -> s: ᾱ_s of the next kept index (1 after the last), β = 1 − ᾱ_t/ᾱ_s.
        c_x0, c_xt, var, beta = posterior_coefficients(ab[t], ab[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        last = i + 1 == len(ts)
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        for r in range(1 if last else int(resample)):
            # (1) Alg. 1 line 5: known pixels from the forward process at t, with fresh noise.
            known = q_sample(image, tt, randn(x.shape, generator, x.device, x.dtype), schedule)
            x = torch.where(mask, x, known)
            # (2) The model's estimate of x_0 at t.
            x0, _ = denoise(x, t)
            if callback is not None:
                callback({"i": n, "t": t, "x": x, "x0": x0, "round": r})
            n += 1
            # (3) Alg. 1 lines 6-7 (DDPM eq. 7): posterior mean; on the last step it is x̂_0 and no noise is added.
            mean = c_x0 * x0 + c_xt * x
            if last:
                return mean
            x_s = mean + var**0.5 * randn(x.shape, generator, x.device, x.dtype)
            if r + 1 < resample:
                # (4) Alg. 1 line 10: jump back, x_t ~ q(x_t | x_s) = N(√(1−β) x_s, β I), and redo the step.
                x = (1 - beta) ** 0.5 * x_s + beta**0.5 * randn(x.shape, generator, x.device, x.dtype)
            else:
                x = x_s
    return x


@torch.no_grad()
def edit(
    model: Callable[..., Tensor],
    image: Tensor,
    schedule: Schedule,
    strength: float,
    mask: Tensor | None = None,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    spacing: str | None = None,
    resample: int = 1,
    generator: Generators = None,
    prediction: str = "eps",
    clip_x0: bool = True,
    labels: Tensor | None = None,
    guidance: float | None = None,
    callback: Callback = None,
    learned_variance: str | None = None,
    **options: Any,
) -> Tensor:
    """SDEdit an image, or inpaint it where ``mask`` is True. Returns (B, C, H, W) in [-1, 1] (when clipping).

    Args:
        model: ``model(x_t, t[, labels])`` as for :func:`ddpm.sample`.
        image: (B, C, H, W) in [-1, 1], on the model's device.
        schedule: the training schedule.
        strength: s in [0, 1]; the image is noised to t0 = round(s·(T−1)). s = 0 returns ``image`` unchanged.
        mask: bool, broadcastable to ``image`` (e.g. (B, 1, H, W)); True = regenerate, False = keep exactly.
        sampler, steps, spacing: the sampling path (default: ``DEFAULT_SAMPLER``, read at call time); only
            the indices <= t0 of the spaced path are used (see :func:`edit_timesteps`).
        resample: RePaint's R; R > 1 needs a mask and uses the ancestral DDPM step (sampler ``"ddpm"``).
        generator: None, one generator or one per image; all noise (start, known pixels, steps) comes from it.
        prediction, clip_x0, labels, guidance: as for :func:`ddpm.sample`.
        callback: called after every model evaluation with a dict (i, t, x, x0).
        learned_variance: as for :func:`ddpm.sample`; edits follow the model's mean (the ancestral step takes its
            ``variance`` option, β̃ by default).
        options: sampler options (``eta`` for ``"ddim"``, ...).
    """
    check_strength(strength)
    sampler, steps, spacing = _edit_path(schedule, sampler, steps, spacing, resample, mask, options)
    mask = _check_image_and_mask(image, mask)
    if float(strength) == 0.0:
        return image.clone()
    timesteps = edit_timesteps(schedule, strength, steps, spacing)
    # (1) SDEdit: x_{t0} ~ q(x_{t0} | x_0 = image).
    t0 = torch.full((image.shape[0],), int(timesteps[0]), dtype=torch.long, device=image.device)
    x = q_sample(image, t0, randn(image.shape, generator, image.device, image.dtype), schedule)
    denoise = make_denoiser(model, schedule, prediction, clip_x0, labels, guidance, learned_variance=learned_variance)
    if mask is None:
        # (2) ... and solve the reverse process from t0 with an ordinary sampler.
        return SAMPLERS[sampler](denoise, x, schedule, timesteps, generator, callback, **options)
    if resample > 1:
        out = repaint(denoise, x, image, mask, schedule, timesteps, generator, resample, callback)
    else:
        wrapped = inpainting_denoiser(denoise, image, mask, schedule, generator)
        out = SAMPLERS[sampler](wrapped, x, schedule, timesteps, generator, callback, **options)
    # (3) The known pixels come from the input, exactly.
    return torch.where(mask, out, image)


def _edit_path(
    schedule: Schedule,
    sampler: str | None,
    steps: int | None,
    spacing: str | None,
    resample: int,
    mask: Tensor | None,
    options: dict[str, Any],
) -> tuple[str, int, str]:
    """The (sampler, steps, spacing) of an edit: ``DEFAULT_SAMPLER`` fills in what is None (steps capped at T).

    RePaint (``resample`` > 1) needs a mask and takes the ancestral DDPM step, so no other sampler or options.
    """
    _check_resample(resample)
    if resample > 1:
        if mask is None:
            raise ParameterError("{resample} needs {mask}: RePaint resampling harmonises generated and known pixels")
        if sampler not in (None, "ddpm"):
            raise ParameterError(
                f"{{resample}} uses the ancestral DDPM step: drop {{sampler}} {sampler} or pass {{sampler}} ddpm"
            )
        if options:
            raise ParameterError(f"{{resample}} takes no sampler options; got {', '.join(options)}")
        sampler = "ddpm"
    default = DEFAULT_SAMPLER
    sampler = sampler or default.name
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    return sampler, min(default.steps, schedule.timesteps) if steps is None else steps, spacing or default.spacing


def _check_image_and_mask(image: Tensor, mask: Tensor | None) -> Tensor | None:
    """Check that image is (B, C, H, W) and that the mask broadcasts to it; the mask as bool on image's device."""
    if image.ndim != 4:
        raise ValueError(f"image must be (B, C, H, W); got shape {tuple(image.shape)}")
    if mask is not None:
        mask = mask.to(device=image.device, dtype=torch.bool)
        torch.broadcast_shapes(mask.shape, image.shape)  # raises if they cannot be combined
    return mask
