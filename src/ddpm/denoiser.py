"""The model callable as the samplers see it: ``denoise(x_t, t) -> (x̂_0, ε̂)``, and the random draws they make.

:func:`make_denoiser` wraps a network (any callable ``model(x_t, t)`` or ``model(x_t, t, labels)``): its
prediction type, classifier-free guidance, x̂_0 clipping or dynamic thresholding, and a learned variance
(:class:`Denoised`). :func:`randn` draws noise from one generator per image (:func:`image_generators`), so image
*i* is the same at any batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .diffusion import LEARNED_VARIANCES, PREDICTIONS, eps_from_x0, learned_log_variance, prediction_to_x0_eps
from .schedule import Schedule
from .seeding import image_seed
from .unet import check_labels, model_num_classes

Generators = torch.Generator | Sequence[torch.Generator] | None
Denoiser = Callable[[Tensor, int], tuple[Tensor, Tensor]]
Callback = Callable[[dict[str, Any]], None] | None


def randn(
    shape: Sequence[int], generator: Generators, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal noise of ``shape`` (B, ...). With a list of generators, row i comes from generator i.

    Draws happen on the generator's device (CPU generators give the same numbers on every machine)
    and are moved to ``device``.
    """
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}; pass one per image")
    rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype) for g in gens]
    return torch.stack(rows).to(device)


def image_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded from (seed, image index) so image i never depends on the batch."""
    return [torch.Generator().manual_seed(image_seed(seed, i)) for i in indices]


class Denoised(tuple):
    """(x̂_0, ε̂), both (B, C, H, W), from a network that also predicts its variance: ``variance_output`` (B, C, H, W)
    is that part of its output, read by :meth:`log_variance`. Unpacks like the plain pair."""

    variance_output: Tensor
    variance: str

    def __new__(cls, x0: Tensor, eps: Tensor, variance_output: Tensor, variance: str) -> Denoised:
        self = super().__new__(cls, (x0, eps))
        self.variance_output, self.variance = variance_output, variance
        return self

    def log_variance(self, log_small: Tensor | float, log_large: Tensor | float) -> Tensor:
        """log σ² (B, C, H, W) of the step whose fixed choices are log β̃ = ``log_small`` and log β = ``log_large``."""
        return learned_log_variance(self.variance_output, self.variance, log_small, log_large)


def conditioned(model: Callable[..., Tensor], cond: Tensor | None, level: Tensor | None = None,
                augment: Tensor | None = None) -> Callable[..., Tensor]:  # fmt: skip
    """``model(x_t, t[, labels])`` that passes a batch's image condition (B, Cc, H, W), its augmentation level (B,)
    and augmentation parameters (B, D) to a network that takes them (``model`` itself where all are None). Where
    guidance calls the network on the two halves of a batch at once, each goes with both halves."""
    if cond is None and level is None and augment is None:
        return model
    extras = {"cond": cond, "cond_level": level, "augment": augment}

    def call(x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        given = {k: v for k, v in extras.items() if v is not None}
        reps = x.shape[0] // next(iter(given.values())).shape[0]
        given = {k: (v if reps == 1 else v.repeat(reps, *[1] * (v.ndim - 1))).to(x.device) for k, v in given.items()}
        return model(x, t, labels, **given)

    return call


def make_denoiser(
    model: Callable[..., Tensor],
    schedule: Schedule,
    prediction: str = "eps",
    clip_x0: bool = True,
    labels: Tensor | None = None,
    guidance: float | None = None,
    *,
    threshold: float | None = None,
    learned_variance: str | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
) -> Denoiser:
    """Wrap ``model(x_t, t[, labels])`` into ``denoise(x, t) -> (x0, eps)`` (both (B, C, H, W)).

    Classifier-free guidance combines the two outputs as out_u + w · (out_c − out_u) in one batched
    call; w = 0 and w = 1 call only the unconditional / conditional model, so they are exact. The
    combination is affine with weights summing to one, so it is the same in ε, x_0 or v space.
    With ``clip_x0`` the predicted x_0 is clamped to [-1, 1] and ε recomputed from it, so that every
    sampler stays consistent with the clipped prediction.
    With ``threshold=p`` (e.g. 0.995), dynamic thresholding (Imagen, Saharia et al. 2022, §2.3) is used
    instead, whatever ``clip_x0`` says: per image, s = max(1, p-quantile of |x̂_0|), and x̂_0 is clamped
    to [−s, s] and divided by s.
    ``learned_variance`` (``"learned"`` or ``"learned-range"``) says that the model returns 2C channels, the
    prediction and then its variance output; the denoiser returns a :class:`Denoised` pair then.
    ``project`` maps x̂_0 (B, C, H, W) to an image that satisfies a known constraint (a super-resolution model's
    consistency with its low image: :func:`ddpm.conditioning.project_low`); it is applied after the clamp, and ε
    is recomputed from its result as for clipping.
    """
    if threshold is not None and not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold is a quantile in (0, 1] (e.g. 0.995); got {threshold!r}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    if learned_variance is not None and learned_variance not in LEARNED_VARIANCES:
        raise ValueError(
            f"learned_variance must be None or one of {', '.join(LEARNED_VARIANCES)}; got {learned_variance!r}"
        )
    call = _model_call(model, labels, guidance, learned_variance is not None)
    ab, ab_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev

    def denoise(x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        a = ab[t].item()
        out = call(x, t)
        pred = out if learned_variance is None else out[:, : x.shape[1]]
        x0, eps = prediction_to_x0_eps(pred, x, a, prediction, ab_prev[t].item())
        if threshold is not None:
            x0 = _dynamic_threshold(x0, float(threshold))
            eps = eps_from_x0(x, x0, a)
        elif clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = eps_from_x0(x, x0, a)
        if project is not None:
            x0 = project(x0)
            eps = eps_from_x0(x, x0, a)
        if learned_variance is None:
            return x0, eps
        return Denoised(x0, eps, out[:, x.shape[1] :], learned_variance)

    return denoise


def _model_call(
    model: Callable[..., Tensor], labels: Tensor | None, guidance: float | None, learned_variance: bool = False
) -> Callable[[Tensor, int], Tensor]:
    """``call(x, t)``: the model's prediction at x (B, C, H, W) and the python int index t, guided when
    ``labels`` (B,) are given; checks that the prediction has x's shape (twice its channels with a
    ``learned_variance``)."""
    if guidance is not None and labels is None:
        raise ValueError("guidance needs labels: pass labels= (a LongTensor (B,)) with guidance=")
    if labels is not None:
        check_labels(labels, model_num_classes(model))  # once here: the network checks only shapes

    def call(x: Tensor, t: int) -> Tensor:
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = (
            model(x, tt)
            if labels is None
            else _guided(model, x, tt, labels.to(x.device), guidance, x.shape[1] if learned_variance else None)
        )
        want = (x.shape[0], 2 * x.shape[1], *x.shape[2:]) if learned_variance else tuple(x.shape)
        if tuple(out.shape) != want:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
                f"it must return {want} ("
                + (
                    "the prediction, then its variance output)"
                    if learned_variance
                    else "a prediction with x_t's shape)"
                )
            )
        return out

    return call


def _guided(
    model: Callable[..., Tensor],
    x: Tensor,
    tt: Tensor,
    y: Tensor,
    guidance: float | None,
    guided_channels: int | None = None,
) -> Tensor:
    """Classifier-free guidance: out_u + w · (out_c − out_u) for x (B, C, H, W), tt (B,), labels y (B,).

    w = None or 1 is the conditional output alone and w = 0 the unconditional one (label −1), one call each;
    any other w evaluates both halves in one batch of 2B. With ``guided_channels`` only the first that many
    output channels (the prediction) are combined, and the rest (a learned variance) is the conditional one's, as
    in GLIDE.
    """
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must be a LongTensor of shape ({x.shape[0]},); got {tuple(y.shape)}")
    if guidance is None or guidance == 1:
        return model(x, tt, y)
    if guidance == 0:
        return model(x, tt, torch.full_like(y, -1))
    both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([torch.full_like(y, -1), y]))
    out_u, out_c = both.chunk(2)
    if guided_channels is None:
        return out_u + guidance * (out_c - out_u)
    k = guided_channels
    return torch.cat([out_u[:, :k] + guidance * (out_c[:, :k] - out_u[:, :k]), out_c[:, k:]], dim=1)


def _dynamic_threshold(x0: Tensor, p: float) -> Tensor:
    """Dynamic thresholding of x̂_0 (B, C, H, W): per image s = max(1, p-quantile of |x̂_0|), clamp to [−s, s], ÷ s."""
    s = torch.quantile(x0.flatten(1).abs().float(), p, dim=1).to(x0.dtype).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))  # (B, 1, 1, 1)
    return torch.maximum(torch.minimum(x0, s), -s) / s
