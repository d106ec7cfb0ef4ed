"""What a run logs: metrics.jsonl cut back to the resumed step, eval lines and curves, and the sample grids."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

import ddpm
from ddpm.data.load import load_dataset
from ddpm.images import make_grid, to_uint8
from ddpm.sampler_choice import DEFAULT_SAMPLER
from ddpm.train import TrainConfig
from ddpm.train.batches import TrainingSet
from ddpm.train.log import MetricsLog, default_choice, write_grid


def _record(step: int, loss: float) -> dict:
    return {"step": step, "loss": loss, "loss_smooth": loss}


def test_a_resumed_log_drops_the_lines_of_steps_that_will_be_redone(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", None)
    for step in (2, 4, 6, 8):
        log.write(_record(step, 1.0 / step))
    log.write_eval(4, {"eval_fd": 3.5, "eval_num": 10}, tmp_path / "eval.png")
    log.write_eval(8, {"eval_fd": 2.5, "eval_num": 10}, tmp_path / "eval.png")
    assert (tmp_path / "eval.png").is_file()  # drawn once two points exist

    resumed = MetricsLog(tmp_path / "metrics.jsonl", 4)
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in kept] == [2, 4, 4]
    assert resumed.curve == [(2, 0.5), (4, 0.25)] and resumed.eval_curve == [(4, 3.5)]
    resumed.write(_record(6, 0.1))
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1]) == _record(6, 0.1)
    resumed.plot(tmp_path / "loss.png")
    assert Image.open(tmp_path / "loss.png").size == (640, 360)


def test_the_training_grid_is_the_default_sampler_on_seeded_images_one_class_per_column(tmp_path):
    """write_grid = images 0..n-1 of cfg.seed by the default sampler at cfg.sample_steps, image i of class i mod K."""
    data = load_dataset("digits")
    net = ddpm.UNet.from_preset("tiny", channels=1, image_size=8, num_classes=10).eval()
    schedule = ddpm.Schedule.linear(50)
    cfg = TrainConfig(out=str(tmp_path), class_cond=True, num_samples=12, sample_steps=3, seed=5)
    write_grid(tmp_path / "grid.png", net, schedule, cfg, TrainingSet(data, None, torch.device("cpu")),
               torch.device("cpu"))  # fmt: skip
    name, spacing = DEFAULT_SAMPLER.name, DEFAULT_SAMPLER.spacing
    assert default_choice(3, schedule).steps == 3 and default_choice(500, schedule).steps == 50
    x = ddpm.sample(
        net,
        (12, 1, 8, 8),
        schedule,
        sampler=name,
        steps=3,
        spacing=spacing,
        generator=ddpm.image_generators(5, range(12)),
        labels=torch.arange(12) % 10,
    )
    expected = make_grid(to_uint8(x), nrow=10, pad_value=128, scale=8)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid.png")), expected.squeeze(-1))
