"""Tests for what ddpm eval reads: sample folders and their provenance, .npz files, the settings' checks."""

import dataclasses

import numpy as np
import pytest

from ddpm.errors import ParameterError, UserError
from ddpm.evaluation.evaluate import evaluate_images
from ddpm.evaluation.samples import read_samples
from ddpm.evaluation.settings import EvalSettings
from ddpm.images import save_png
from ddpm.provenance import Provenance
from ddpm.sampler_choice import SamplerChoice, SampleSettings

PROV = Provenance(
    "sample", 7, 0, SamplerChoice("ddim", "trailing", 12, {"eta": 0.5}), None, None, True, True, "ab" * 32
)


def image(value: int) -> np.ndarray:
    return np.full((4, 4, 1), value, np.uint8)


def test_a_folder_of_ddpm_samples_records_their_settings(tmp_path):
    for i in range(3):
        save_png(tmp_path / f"{i:06d}.png", image(10 * i), PROV.of("sample", i).text_chunks())
    save_png(tmp_path / "grid.png", image(0), PROV.of("grid", "0-2").text_chunks())
    save_png(tmp_path / "step-000000012.png", image(0))  # a training grid: no metadata
    pixels, info = read_samples(tmp_path)
    assert pixels.shape == (3, 1, 4, 4) and pixels[:, 0, 0, 0].tolist() == [0, 10, 20]
    assert (info["files"], info["skipped_non_sample_pictures"]) == (3, 2)
    assert info["ddpm_metadata"] == {
        "checkpoint_sha256": "ab" * 32,
        "sampler": "ddim",
        "spacing": "trailing",
        "steps": "12",
        "eta": "0.5",
        "guidance": "",
        "class": "",
        "clip_x0": "True",
        "ema": "True",
        "seed": "7",
        "version": PROV.version,
        "files_with_metadata": 3,
        "all_alike": True,
    }


def test_damaged_metadata_counts_as_none_and_different_settings_are_not_alike(tmp_path):
    save_png(tmp_path / "a.png", image(1), PROV.text_chunks())
    save_png(tmp_path / "b.png", image(2), {**PROV.text_chunks(), "ddpm:steps": "twelve"})
    _, info = read_samples(tmp_path)
    assert info["files"] == 1 and info["skipped_non_sample_pictures"] == 1
    (tmp_path / "a.png").unlink()
    _, info = read_samples(tmp_path)  # no readable record at all: a plain image
    assert info["files"] == 1 and "ddpm_metadata" not in info
    save_png(tmp_path / "c.png", image(3), PROV.text_chunks())
    save_png(tmp_path / "d.png", image(4), PROV.of("sample", 1).text_chunks() | {"ddpm:seed": "8"})
    _, info = read_samples(tmp_path)
    assert info["ddpm_metadata"]["files_with_metadata"] == 2 and not info["ddpm_metadata"]["all_alike"]


def test_npz_files(tmp_path):
    np.savez(tmp_path / "one.npz", x=np.zeros((2, 4, 4), np.uint8))
    pixels, info = read_samples(tmp_path / "one.npz")
    assert pixels.shape == (2, 1, 4, 4) and info["format"] == "npz array 'x'"
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 4, 4, 3), np.uint8), images=np.ones((5, 4, 4, 3), np.uint8))
    pixels, _ = read_samples(tmp_path / "two.npz")
    assert pixels.shape == (5, 3, 4, 4) and pixels.min() == 1
    np.savez(tmp_path / "bad.npz", a=np.zeros(2), b=np.zeros(2))
    with pytest.raises(UserError, match="none named 'images'"):
        read_samples(tmp_path / "bad.npz")
    with pytest.raises(ParameterError, match="samples .* no such file"):
        read_samples(tmp_path / "nope")


def test_settings_are_checked_before_any_work(tmp_path):
    cases = [
        ({}, "exactly one of checkpoint RUN"),
        ({"samples": "x", "metrics": "fid,is"}, "metrics 'fid,is'"),
        ({"samples": "x", "nll": True}, "nll needs checkpoint"),
        ({"samples": "x", "num": 1}, "num must be"),
        ({"samples": "x"}, "samples needs data"),
    ]
    for values, match in cases:
        with pytest.raises(ParameterError, match=match):
            evaluate_images(EvalSettings(**values, out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_each_field_declares_its_help():
    fields = dataclasses.fields(EvalSettings)
    assert all(f.metadata["help"] for f in fields)
    flagged = [f.name for f in fields if f.metadata.get("cli", True)]
    assert flagged == [f.name for f in dataclasses.fields(SampleSettings)] + [
        "then",
        "cond_noise",
        "project",
        "samples",
        "data",
        "image_size",
        "condition_data",
        "num",
        "seed",
        "ref_split",
        "ref_num",
        "metrics",
        "nll",
        "nll_num",
        "nll_variance",
        "memorization",
        "out",
        "batch_size",
        "inception",
        "featurenet",
        "cache_dir",
        "progress",
    ]
