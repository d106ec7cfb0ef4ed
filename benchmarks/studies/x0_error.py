"""How good is a trained network's x̂_0 at each noise level? (explains which samplers suit it)

For real held-out images x_0, fixed noise ε and a list of indices t, it computes x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε,
asks the network, converts its output to (x̂_0, ε̂) with the checkpoint's prediction type, and prints per t:

- σ/α = √((1−ᾱ_t)/ᾱ_t), the noise-to-signal ratio;
- the ε mean squared error, next to SNR · (the data's variance about its mean image): the ε MSE of a network
  whose x̂_0 is the mean image, nearly the best possible at very high noise (ε̂ − ε = −(α/σ)(x̂_0 − x_0));
- the x̂_0 mean squared error, raw and clamped to [-1, 1], against the data's variance about its mean image
  (what predicting the mean image scores; an x̂_0 worse than that is worse than knowing nothing).

An ε-predicting network turns an ε error δ into an x̂_0 error (σ/α)·δ, and σ/α reaches 157 at t = 999 of the
linear schedule: its x̂_0 at high noise can be far worse than the mean image, which samplers whose first step is
long (the ``info`` spacing) or that extrapolate x̂_0 carry into the image. A v- or x_0-predicting network does
not have that amplification.

    .venv/bin/python benchmarks/studies/x0_error.py --checkpoint runs/fashion \
        --data /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
"""

from __future__ import annotations

import argparse

import torch

from ddpm.checkpoint import load_model
from ddpm.data.load import load_dataset
from ddpm.diffusion import prediction_to_x0_eps

TIMES = (999, 950, 900, 800, 700, 600, 500, 400, 300, 200, 100, 50, 10, 0)


@torch.no_grad()
def x0_errors(
    model: torch.nn.Module,
    schedule,
    prediction: str,
    x0: torch.Tensor,
    times: tuple[int, ...],
    seed: int = 0,
    batch: int = 256,
) -> list[dict[str, float]]:
    """Per index t of ``times``: σ/α, ε MSE, raw and clamped x̂_0 MSE for images ``x0`` (N, C, H, W) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=g)
    ab = schedule.alphas_cumprod
    rows = []
    for t in times:
        a, s = ab[t].sqrt().item(), (1 - ab[t]).sqrt().item()
        se_eps = se_x0 = se_clip = 0.0
        for i in range(0, len(x0), batch):
            x, e = x0[i : i + batch], eps[i : i + batch]
            xt = a * x + s * e
            out = model(xt, torch.full((len(x),), t, dtype=torch.long))
            x0_hat, eps_hat = prediction_to_x0_eps(out, xt, ab[t].item(), prediction)
            se_eps += float(((eps_hat - e) ** 2).sum())
            se_x0 += float(((x0_hat - x) ** 2).sum())
            se_clip += float(((x0_hat.clamp(-1, 1) - x) ** 2).sum())
        n = x0.numel()
        rows.append(
            {
                "t": t,
                "sigma_over_alpha": s / a,
                "eps_mse": se_eps / n,
                "x0_mse": se_x0 / n,
                "x0_mse_clamped": se_clip / n,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="run directory (latest checkpoint) or checkpoint file")
    ap.add_argument("--data", required=True, help="held-out images (anything --data of `ddpm train` accepts)")
    ap.add_argument("--num", type=int, default=512, help="how many of its images to use")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, ckpt, schedule = load_model(args.checkpoint)
    prediction = ckpt.meta.get("prediction", "eps")
    x0 = load_dataset(args.data).images[: args.num].float()
    var_about_mean = float(((x0 - x0.mean(0, keepdim=True)) ** 2).mean())
    print(
        f"checkpoint {ckpt.path} (step {ckpt.step}, {prediction}-prediction); {len(x0)} images of {args.data}; "
        f"variance about the mean image {var_about_mean:.4f}\n"
    )
    print("| t | σ/α | ε MSE | ε MSE if x̂_0 = mean image | x̂_0 MSE | x̂_0 MSE, clamped |")
    print("|---:|---:|---:|---:|---:|---:|")
    ab = schedule.alphas_cumprod
    for r in x0_errors(model, schedule, prediction, x0, tuple(t for t in TIMES if t < schedule.timesteps)):
        snr = (ab[r["t"]] / (1 - ab[r["t"]])).item()
        print(
            f"| {r['t']} | {r['sigma_over_alpha']:.2f} | {r['eps_mse']:.2e} | {snr * var_about_mean:.2e} | "
            f"{r['x0_mse']:.3f} | {r['x0_mse_clamped']:.3f} |"
        )


if __name__ == "__main__":
    main()
