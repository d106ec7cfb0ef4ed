"""Samplers: plain functions over a model callable, and one public entry point, :func:`sample`.

Every sampler has the same signature (k-diffusion style)::

    fn(denoise, x, schedule, timesteps, generator, callback, **options) -> x0_batch

- ``denoise(x, t) -> (x0, eps)`` wraps the network: guidance, prediction type and x_0 clipping are
  already applied, ``t`` is a python int index into the *training* schedule.
- ``x`` (B, C, H, W) is the starting noise x_T; ``timesteps`` a LongTensor of decreasing indices that
  ends at 0. Multistep memory lives in local variables, never on an object.
- ``generator`` is None, one ``torch.Generator``, or a list with one per image (so image *i* is the
  same at any batch size); every random draw goes through :func:`randn`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .diffusion import PREDICTIONS, eps_from_x0, prediction_to_x0_eps
from .schedule import Schedule, spaced_timesteps

Generators = torch.Generator | Sequence[torch.Generator] | None
Denoiser = Callable[[Tensor, int], tuple[Tensor, Tensor]]
Callback = Callable[[dict[str, Any]], None] | None


def randn(shape: Sequence[int], generator: Generators, device: torch.device | str = "cpu",
          dtype: torch.dtype = torch.float32) -> Tensor:
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
    gens = []
    for i in indices:
        g = torch.Generator()
        # A 64-bit mix of the two numbers (splitmix-style) so nearby seeds give unrelated streams.
        z = (int(seed) * 0x9E3779B97F4A7C15 + int(i) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
        z = ((z ^ (z >> 31)) * 0xD6E8FEB86659FD93) % (1 << 64)
        g.manual_seed(z ^ (z >> 32))
        gens.append(g)
    return gens


def make_denoiser(
    model: Callable[..., Tensor],
    schedule: Schedule,
    prediction: str = "eps",
    clip_x0: bool = True,
    labels: Tensor | None = None,
    guidance: float | None = None,
) -> Denoiser:
    """Wrap ``model(x_t, t[, labels])`` into ``denoise(x, t) -> (x0, eps)`` (both (B, C, H, W)).

    Classifier-free guidance combines the two outputs as out_u + w · (out_c − out_u) in one batched
    call; w = 0 and w = 1 call only the unconditional / conditional model, so they are exact. The
    combination is affine with weights summing to one, so it is the same in ε, x_0 or v space.
    With ``clip_x0`` the predicted x_0 is clamped to [-1, 1] and ε recomputed from it, so that every
    sampler stays consistent with the clipped prediction.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    if guidance is not None and labels is None:
        raise ValueError("guidance needs labels: pass labels= (a LongTensor (B,)) with guidance=")
    ab = schedule.alphas_cumprod

    def call(x: Tensor, t: int) -> Tensor:
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        if labels is None:
            out = model(x, tt)
        else:
            y = labels.to(x.device)
            if y.shape != (x.shape[0],):
                raise ValueError(f"labels must be a LongTensor of shape ({x.shape[0]},); got {tuple(y.shape)}")
            if guidance is None or guidance == 1:
                out = model(x, tt, y)
            elif guidance == 0:
                out = model(x, tt, torch.full_like(y, -1))
            else:
                both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([torch.full_like(y, -1), y]))
                out_u, out_c = both.chunk(2)
                out = out_u + guidance * (out_c - out_u)
        if out.shape != x.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
                             "it must return a prediction with x_t's shape")
        return out

    def denoise(x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        a = ab[t].item()
        x0, eps = prediction_to_x0_eps(call(x, t), x, a, prediction)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = eps_from_x0(x, x0, a)
        return x0, eps

    return denoise


# ---------------------------------------------------------------------------- samplers


def sample_ddpm(
    denoise: Denoiser,
    x: Tensor,
    schedule: Schedule,
    timesteps: Tensor,
    generator: Generators = None,
    callback: Callback = None,
    variance: str = "posterior",
) -> Tensor:
    """Ancestral sampling (DDPM, Ho et al. 2020, Algorithm 2), on any decreasing subset of indices.

    For consecutive kept indices t > s, the step's own β is recomputed from ᾱ: β = 1 − ᾱ_t/ᾱ_s, so
    the subset defines a valid shorter Markov chain (Nichol & Dhariwal 2021, respacing).
    ``variance='posterior'`` uses σ² = β̃ = (1−ᾱ_s)/(1−ᾱ_t) β, ``'beta'`` uses σ² = β.
    The last step (to ᾱ = 1) adds no noise and returns the posterior mean, which is x̂_0.
    """
    if variance not in ("posterior", "beta"):
        raise ValueError(f"unknown variance {variance!r}; choose 'posterior' (β̃_t) or 'beta' (β_t)")
    ab = schedule.alphas_cumprod.tolist()
    ts = timesteps.tolist()
    for i, t in enumerate(ts):
        a_t = ab[t]
        a_s = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
        beta = 1.0 - a_t / a_s
        x0, _ = denoise(x, t)
        # DDPM eq. 7: the posterior mean, written with x̂_0.
        mean = (a_s**0.5 * beta / (1 - a_t)) * x0 + ((1 - beta) ** 0.5 * (1 - a_s) / (1 - a_t)) * x
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
        if i + 1 == len(ts):
            x = mean
        else:
            var = (1 - a_s) / (1 - a_t) * beta if variance == "posterior" else beta
            x = mean + var**0.5 * randn(x.shape, generator, x.device, x.dtype)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
}


@torch.no_grad()
def sample(
    model: Callable[..., Tensor],
    shape: Sequence[int],
    schedule: Schedule,
    sampler: str = "ddpm",
    steps: int | None = None,
    generator: Generators = None,
    clip_x0: bool = True,
    prediction: str = "eps",
    labels: Tensor | None = None,
    guidance: float | None = None,
    progress: bool = False,
    *,
    spacing: str = "linspace",
    callback: Callback = None,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
    **options: Any,
) -> Tensor:
    """Draw images from a diffusion model.

    Args:
        model: any callable ``model(x_t, t)`` (or ``model(x_t, t, labels)``) returning a prediction
            of x_t's shape; ``t`` is a LongTensor (B,) of indices into ``schedule``.
        shape: (B, C, H, W) of the batch.
        schedule: the training schedule.
        sampler: one of ``SAMPLERS`` (``"ddpm"``, ...).
        steps: number of model evaluations' worth of steps; None means T. Fewer steps use a respaced
            subset of indices (``spacing``) that ends at index 0.
        generator: None, a generator, or one generator per image.
        clip_x0: clamp the predicted x_0 to [-1, 1] at every step.
        prediction: what the model predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        labels: LongTensor (B,) of class indices (-1 = no label) for conditional models.
        guidance: classifier-free guidance weight w (0 unconditional, 1 conditional).
        progress: show a tqdm bar.
        callback: called after each model evaluation with a dict (i, t, x, x0).
        x_T: starting noise (B, C, H, W); drawn from ``generator`` when None.
        options: sampler-specific keywords (e.g. ``variance`` for ``"ddpm"``).

    Returns:
        Tensor (B, C, H, W), float32, the final x_0 estimate (in [-1, 1] when clipping).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    shape = tuple(int(s) for s in shape)
    if device is None:
        device = _model_device(model)
    timesteps = spaced_timesteps(schedule, schedule.timesteps if steps is None else steps, spacing)
    x = randn(shape, generator, device) if x_T is None else x_T.to(device=device, dtype=torch.float32)
    if tuple(x.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(x.shape)} but shape is {shape}")
    denoise = make_denoiser(model, schedule, prediction, clip_x0, labels, guidance)
    if progress:
        denoise = _with_progress(denoise, len(timesteps), sampler)
    return SAMPLERS[sampler](denoise, x, schedule, timesteps, generator, callback, **options)


def _model_device(model: Callable[..., Tensor]) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _with_progress(denoise: Denoiser, total: int, name: str) -> Denoiser:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"sampling ({name})", unit="step", leave=False)

    def wrapped(x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        out = denoise(x, t)
        bar.update(1)
        if bar.n >= total:
            bar.close()
        return out

    return wrapped
