"""``Diffusion``: the class of the popular DDPM tutorials, with their method names, on this package's functions.

Much DDPM tutorial code keeps the whole process in one object, ``Diffusion(noise_steps, beta_start, beta_end,
img_size, ...)``, with three methods: ``noise_images(x, t)`` (the forward process, returning x_t and the noise),
``sample_timesteps(n)`` (training's draw of t) and ``sample(model, n)`` (generation, as uint8 images). This
class keeps those names and keyword arguments for code written in that style, and does the work with the package's
exact functions (:meth:`ddpm.Schedule.linear`, :func:`ddpm.q_sample`, :func:`ddpm.sample`): the model is given
the timestep; ``noise_images`` returns the very noise it added; t runs over 0..T−1, index 0 included, in
training and sampling; x̂_0 is clipped to [-1, 1] while sampling; the device and image size are arguments; images
are rounded, not truncated, to uint8.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .denoiser import Generators
from .diffusion import q_sample
from .images import to_uint8
from .sampling import sample
from .schedule import Schedule


class Diffusion:
    """DDPM with a linear β schedule, in the tutorials' vocabulary.

    ``beta``, ``alpha`` and ``alpha_hat`` are float32 copies (on ``device``) of the float64 tables in
    ``self.schedule``, for code written against the tutorials.
    """

    def __init__(
        self,
        noise_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        img_size: int = 64,
        channels: int = 3,
        device: str | torch.device = "cpu",
    ) -> None:
        self.noise_steps = noise_steps
        self.img_size = img_size
        self.channels = channels
        self.device = torch.device(device)
        self.schedule = Schedule.linear(noise_steps, beta_start, beta_end)
        self.beta = self.schedule.betas.float().to(self.device)
        self.alpha = self.schedule.alphas.float().to(self.device)
        self.alpha_hat = self.schedule.alphas_cumprod.float().to(self.device)

    def noise_images(self, x: Tensor, t: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Noise clean images x (B, C, H, W) in [-1, 1] to step t (B,): returns (x_t, ε), ε the noise used."""
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return q_sample(x, t, eps, self.schedule), eps

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n training timesteps drawn uniformly from 0..T−1: LongTensor (n,) on ``device``."""
        return torch.randint(
            0,
            self.noise_steps,
            (n,),
            generator=generator,
            device=generator.device if generator is not None else self.device,
        ).to(self.device)

    @torch.no_grad()
    def sample(
        self,
        model: Callable[..., Tensor],
        n: int,
        labels: Tensor | None = None,
        cfg_scale: float | None = None,
        sampler: str = "ddpm",
        steps: int | None = None,
        generator: Generators = None,
        progress: bool = False,
    ) -> Tensor:
        """Generate n images with ``model(x_t, t[, labels])``: uint8 tensor (n, C, H, W), rounded.

        ``cfg_scale`` is the classifier-free guidance weight (the tutorials' name for ``guidance``).
        """
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        try:
            x = sample(
                model,
                (n, self.channels, self.img_size, self.img_size),
                self.schedule,
                sampler=sampler,
                steps=steps,
                generator=generator,
                labels=labels,
                guidance=cfg_scale,
                progress=progress,
                device=self.device,
            )
        finally:
            if was_training:
                model.train()  # type: ignore[attr-defined]  # a module: it had .training
        return torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2).to(self.device)
