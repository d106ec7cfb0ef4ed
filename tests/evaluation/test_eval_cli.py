"""``ddpm eval`` and ``ddpm train --eval-every`` end to end, on the shared tiny digits model.

Inception runs at ~8 images/s on one CPU thread, so the FID runs here embed a few dozen images.
"""

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
from conftest import TRAIN
from PIL import Image

from ddpm.checkpoint import resolve_checkpoint
from ddpm.cli import build_parser, main
from ddpm.evaluation.inception import INCEPTION_SHA256
from ddpm.evaluation.reference import subset_indices
from ddpm.evaluation.samples import conform_samples, read_samples
from ddpm.evaluation.settings import EvalSettings
from ddpm.files import file_sha256
from ddpm.images import conform
from ddpm.settings import flag_of


@pytest.fixture(scope="module")
def cache(tmp_path_factory, monkeypatch_module=None):
    """One cache for the module: the digits FeatureNet is trained once, reference features reused."""
    return tmp_path_factory.mktemp("ddpm-cache")


def run(argv, cache):
    return main([*argv, "--cache-dir", str(cache), "--quiet"])


@pytest.mark.slow
def test_eval_checkpoint_then_samples_file_with_every_metric(run_dir, tmp_path, cache, capsys):
    out = tmp_path / "e"
    argv = [
        "eval",
        "--checkpoint",
        str(run_dir),
        "--num",
        "12",
        "--steps",
        "4",
        "--ref-num",
        "20",
        "--seed",
        "5",
        "--metrics",
        "fid,kid,pr,fd",
        "--memorization",
        "--out",
        str(out),
    ]
    assert run(argv, cache) == 0
    table = capsys.readouterr().out
    assert "FID" in table and "precision" in table and "FD" in table
    rec = json.loads((out / "eval.json").read_text())
    m, p = rec["metrics"], rec["protocol"]
    assert set(m) == {"fid", "kid", "kid_std", "precision", "recall", "fd"}
    assert all(math.isfinite(v) for v in m.values()) and m["fid"] > 0 and m["fd"] > 0
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    # The protocol: counts, split, subset, extractors with hashes and resize, sampler, EMA, checkpoint, seeds.
    g, r = p["generated"], p["reference"]
    ckpt = resolve_checkpoint(run_dir)
    assert (g["num"], g["seed"], g["steps"], g["ema"]) == (12, 5, 4, True)
    assert g["sampler"] and g["spacing"] and g["checkpoint_sha256"] == file_sha256(ckpt)
    assert (r["data"], r["split"], r["num"], r["split_size"]) == ("digits", "train", 20, 1797)
    assert p["extractors"]["inception"]["sha256"] == INCEPTION_SHA256
    assert "bilinear" in p["extractors"]["inception"]["resize"]
    assert p["extractors"]["featurenet"]["sha256"] and p["kid"]["subset_size"] == 12 and p["pr"]["k"] == 3
    mem = rec["memorization"]
    assert mem["pixels"]["baseline"].startswith("train to train")  # digits has no test split
    assert 0 <= mem["features"]["share_closer"] <= 1 and len(mem["pixels"]["closest"]) == 8
    with Image.open(out / "memorization.png") as im:
        assert im.size[0] > 4 * 8
    samples = np.load(out / "samples.npz")["images"]
    assert samples.shape == (12, 8, 8, 1) and samples.dtype == np.uint8

    # The same images again, from the file: same numbers, and the reference comes from the cache.
    again = tmp_path / "again"
    assert (
        run(
            [
                "eval",
                "--samples",
                str(out / "samples.npz"),
                "--data",
                "digits",
                "--ref-num",
                "20",
                "--metrics",
                "fid,fd",
                "--memorization",
                "--out",
                str(again),
            ],
            cache,
        )
        == 0
    )
    rec2 = json.loads((again / "eval.json").read_text())
    assert rec2["metrics"]["fid"] == pytest.approx(m["fid"], rel=1e-6)
    assert rec2["metrics"]["fd"] == pytest.approx(m["fd"], rel=1e-6)
    assert rec2["memorization"]["pixels"] == mem["pixels"] and (again / "memorization.png").is_file()
    assert rec2["protocol"]["cache"]["inception_reference"].endswith("(read)")
    assert rec2["protocol"]["extractors"]["featurenet"]["sha256"] == p["extractors"]["featurenet"]["sha256"]
    assert "training the FeatureNet" not in capsys.readouterr().err  # trained once, never again


@pytest.mark.slow
def test_eval_folder_of_pngs(run_dir, tmp_path, cache):
    folder = tmp_path / "s"
    assert (
        main(["sample", "--checkpoint", str(run_dir), "--num", "6", "--steps", "3", "--out", str(folder), "--quiet"])
        == 0
    )
    Image.new("L", (20, 20)).save(folder / "step-000000012.png")  # a training grid in RUN/samples: no metadata
    assert run(["eval", "--samples", str(folder), "--data", "digits", "--metrics", "fd"], cache) == 0
    rec = json.loads((folder / "eval.json").read_text())  # beside the samples
    g = rec["protocol"]["generated"]
    assert g["num"] == 6 and g["skipped_non_sample_pictures"] == 2  # grid.png and the training grid
    assert g["ddpm_metadata"]["steps"] == "3" and g["ddpm_metadata"]["all_alike"]
    assert rec["metrics"]["fd"] > 0 and rec["protocol"]["reference"]["num"] == 1797


def test_bad_input_is_one_line_and_overwrites_nothing(run_dir, tmp_path, cache, capsys):
    def pngs(folder, sizes, mode="L"):
        folder.mkdir()
        for i, s in enumerate(sizes):
            Image.new(mode, (s, s), 100 + i).save(folder / f"{i}.png")
        return folder

    empty = tmp_path / "empty"
    empty.mkdir()
    fine = pngs(tmp_path / "fine", [8] * 6)
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "eval.json").write_text("mine")
    floats = tmp_path / "f.npz"
    np.savez(floats, images=np.zeros((4, 8, 8, 1), np.float32))
    cases = [
        (["--samples", str(empty), "--data", "digits"], "holds no images"),
        (["--samples", str(fine), "--data", "digits", "--ref-num", "5"], "6 samples but only 5 reference"),
        (["--samples", str(fine), "--data", "digits", "--ref-num", "5000"], "larger than the train split"),
        (["--samples", str(fine), "--data", "digits", "--ref-split", "test"], "no test split"),
        (["--samples", str(fine), "--data", "digits", "--metrics", "fid,is"], "--metrics"),
        (["--samples", str(fine), "--data", "digits", "--out", str(kept)], "--overwrite"),
        (["--samples", str(floats), "--data", "digits"], "float32"),
        (["--samples", str(fine)], "needs --data"),
        (["--samples", str(fine), "--data", "digits", "--num", "3", "--metrics", "pr"], "more than k = 3"),
        (["--samples", str(fine), "--checkpoint", str(run_dir), "--data", "digits"], "exactly one"),
        (["--checkpoint", str(run_dir), "--num", "2000", "--out", str(tmp_path / "n")], "larger than the reference"),
        (
            ["--samples", str(fine), "--data", str(fine), "--metrics", "fd"],
            f"--metrics fd needs a labelled data set (FeatureNet is a classifier), and {fine} has no labels",
        ),
        (
            ["--samples", str(fine), "--data", "digits", "--metrics", "fd", "--featurenet", str(tmp_path / "no.st")],
            f"error: --featurenet {tmp_path / 'no.st'}: no such file",
        ),
        (["--samples", str(fine), "--data", str(tmp_path / "none")], f"error: --data '{tmp_path / 'none'}': no such"),
    ]
    for argv, match in cases:
        assert run(["eval", *argv], cache) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and match in err, (argv, err)
    assert (kept / "eval.json").read_text() == "mine"
    assert not (fine / "eval.json").exists() and not (tmp_path / "n").exists()


def test_samples_of_another_size_or_mode_are_brought_to_the_references_and_said(tmp_path, cache, capsys):
    """Mixed sizes, a larger size and colour against the 8x8 gray digits: each picture brought to 8x8 gray as
    training reads pictures (the same pixels as conform), scored, and said in one line."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((8, 8), (40, 50), (16, 16), (9, 12))]
    for i, p in enumerate(pictures):
        Image.fromarray(p).save(folder / f"{i}.png")
    assert run(["eval", "--samples", str(folder), "--data", "digits", "--metrics", "fd"], cache) == 0
    err = capsys.readouterr().err
    assert "brought the 4 samples from 12x9 RGB, 16x16 RGB, 50x40 RGB to 8x8 gray, as training reads pictures" in err
    rec = json.loads((folder / "eval.json").read_text())
    assert rec["protocol"]["generated"]["resized_from"] == ["12x9 RGB", "16x16 RGB", "50x40 RGB", "8x8 RGB"]
    assert math.isfinite(rec["metrics"]["fd"])
    gen, _ = conform_samples(read_samples(folder)[0], 1, 8)
    assert gen.shape == (4, 1, 8, 8) and np.array_equal(gen[1, 0], conform(pictures[1], 1, 8)[:, :, 0])


@pytest.mark.slow
def test_fid_of_photos_of_another_size_against_a_folder_at_32_px(tmp_path, cache):
    """The issue's case: a folder of 500x400 photos against a folder of images at --image-size 32."""
    from sklearn.datasets import load_sample_images

    photos, data = tmp_path / "photos", tmp_path / "data"
    photos.mkdir()
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        for folder, (h, w) in ((photos, (400, 500)), (data, (70, 90))):
            img = load_sample_images().images[i % 2]
            y, x = rng.integers(0, img.shape[0] - h), rng.integers(0, img.shape[1] - w)
            Image.fromarray(img[y : y + h, x : x + w]).save(folder / f"{i}.png")
    args = ["eval", "--samples", str(photos), "--data", str(data), "--image-size", "32", "--metrics", "fid"]
    assert run(args, cache) == 0
    rec = json.loads((photos / "eval.json").read_text())
    assert math.isfinite(rec["metrics"]["fid"]) and rec["protocol"]["generated"]["resized_from"] == ["500x400 RGB"]


def test_train_eval_every_writes_the_metric(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(cache))
    out = tmp_path / "r"
    argv = [a for a in TRAIN] + ["--out", str(out), "--eval-every", "6", "--eval-num", "16"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if "eval_fd" in r]
    assert [r["step"] for r in evals] == [6, 12]
    assert all(math.isfinite(r["eval_fd"]) and r["eval_fd"] > 0 and r["eval_num"] == 16 for r in evals)
    assert evals[0]["eval_ref_num"] == 1797
    assert [r["step"] for r in lines if "loss" in r] == [4, 8, 12]  # the loss lines are unchanged
    assert (out / "eval.png").is_file() and (out / "loss.png").is_file()


def test_train_eval_every_refuses_unlabelled_fd_before_training(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), 40 * i).save(folder / f"{i}.png")
    out = tmp_path / "r"
    assert (
        main(["train", "--data", str(folder), "--out", str(out), "--steps", "2", "--eval-every", "1", "--quiet"]) == 2
    )
    assert "needs a labelled data set" in capsys.readouterr().err
    assert not list((out / "checkpoints").glob("*.safetensors"))


@pytest.mark.slow
def test_eval_nll_is_the_library_bound_with_its_protocol(run_dir, tmp_path, cache, capsys):
    """--nll alone writes the bound of --nll-num seeded images, equal to ddpm.bits_per_dim on the same inputs."""
    import torch

    from ddpm import bits_per_dim, image_generators, load_dataset, load_model

    out = tmp_path / "nll"
    assert (
        run(
            [
                "eval",
                "--checkpoint",
                str(run_dir),
                "--nll",
                "--nll-num",
                "3",
                "--nll-variance",
                "beta",
                "--batch-size",
                "2",
                "--out",
                str(out),
            ],
            cache,
        )
        == 0
    )
    record = json.loads((out / "eval.json").read_text())
    assert set(record["metrics"]) == {"nll"} and not (out / "samples.npz").exists()
    proto = record["protocol"]["nll"]
    assert (proto["split"], proto["num"], proto["variance"], proto["timesteps"]) == ("train", 3, "beta", 1000)
    model, ckpt, schedule = load_model(run_dir)
    data = load_dataset("digits")
    x0 = data.images[torch.as_tensor(subset_indices(len(data), 3, seed=3))]
    direct = bits_per_dim(model, x0, schedule, variance="beta", batch_size=3, generator=image_generators(0, range(3)))
    assert record["metrics"]["nll"]["bits_per_dim"] == pytest.approx(direct.summary()["bits_per_dim"], rel=1e-5)
    assert "NLL" in capsys.readouterr().out
    assert run(["eval", "--samples", str(out), "--data", "digits", "--nll"], cache) == 2
    assert "--nll needs --checkpoint" in capsys.readouterr().err


def test_eval_settings_fields_declare_the_flags():
    """Each EvalSettings field with a flag carries that flag's help, metavar, choices and default, in help order."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["eval"]
    fields = [f for f in dataclasses.fields(EvalSettings) if f.metadata.get("cli", True)]
    for f in fields:
        action = sub._option_string_actions[flag_of(f)]
        assert action.help == f.metadata["help"], f.name
        plain = "choices" in f.metadata or f.type in ("bool", bool) or "action" in f.metadata  # {a,b} or nothing
        assert action.metavar == f.metadata.get("metavar", None if plain else f.name.upper()), f.name
        assert list(action.choices or []) == list(f.metadata.get("choices", [])), f.name
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert action.default == (default if f.metadata.get("action") != "append" else []), f.name
    names = {f.name for f in fields}
    assert [a.dest for a in sub._actions if a.dest in names] == [f.name for f in fields]
