"""Tests for ddpm.data.prepared and ddpm.data.preparing: a prepared set holds exactly what load_dataset gives, is
rebuilt when its source or settings change, is never used unfinished or damaged, and trains bit for bit like the
in-memory data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm.data.preparing as P
from ddpm.cli import main
from ddpm.data.folders import JPEG_DRAFT_MARGIN, decode_fitted, decode_image
from ddpm.data.load import load_dataset
from ddpm.data.prepared import prepared_locations
from ddpm.errors import ParameterError, UserError
from ddpm.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def noise_image(seed: int, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A random picture of ``size`` (W, H): smooth blobs plus noise, so resampling has something to do."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(xx / (3 + seed % 5)) * np.cos(yy / (4 + seed % 3))
    arr = np.clip(base[..., None] + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


def mixed_folder(root: Path) -> Path:
    """Two classes of images in every mode load_dataset converts, at several sizes (no JPEG big enough to draft)."""
    save(noise_image(0, (9, 7)), root / "cats" / "rgb.png")
    save(noise_image(1, (7, 9), "L"), root / "cats" / "gray.png")
    save(noise_image(2, (8, 8), "RGBA"), root / "cats" / "rgba.png")
    save(noise_image(3, (12, 10), "P"), root / "cats" / "sub" / "palette.gif")
    save(noise_image(4, (10, 10), "CMYK"), root / "dogs" / "cmyk.jpg")
    save(Image.fromarray((np.arange(110).reshape(10, 11) * 590).astype(np.uint16)), root / "dogs" / "i16.png")
    save(noise_image(5, (13, 11), "LA"), root / "dogs" / "la.png")
    save(noise_image(6, (40, 47)), root / "dogs" / "photo.jpg", quality=90)  # below 2 x 4 x 6: no draft
    return root


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 2 rows, so a few files make several blocks and a pool of workers."""
    monkeypatch.setattr(P, "BLOCK_ROWS", 2)


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


# --------------------------------------------------------------------------------------------------
# same pixels as today's loader


def test_prepared_equals_load_dataset_pixel_for_pixel(tmp_path, small_blocks, capsys):
    src = mixed_folder(tmp_path / "pets")
    folder = P.prepare_dataset(str(src), 6, workers=2, progress=False)
    assert folder == src / ".ddpm" / "pets-6px"
    out = capsys.readouterr().out
    assert out.startswith("prepared pets (8 images, 6x6, 3 channels, 2 classes) in ") and out.count("\n") == 1
    ds, ref = P.open_prepared(folder), load_dataset(str(src), 6)
    assert ds.memory_mapped and not ref.memory_mapped and isinstance(ds.pixels, torch.Tensor)
    assert ref.pixels.dtype == torch.float32  # the 16-bit file makes today's set float; prepared rounds it
    assert np.array_equal(ds.pixels.numpy(), ref.as_uint8())
    assert ds.labels.tolist() == ref.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert ds.class_names == ["cats", "dogs"] and ds.name == ref.name and ds.levels == 255
    # read through the memory map, a batch at a time
    idx = torch.tensor([7, 0, 3])
    assert torch.equal(ds.gather(idx), torch.from_numpy(ref.as_uint8())[idx])
    # a second call reuses it, and says so
    assert P.prepare_dataset(str(src), 6, progress=False) == folder
    assert capsys.readouterr().out.startswith("data: pets (8 images, 6x6, 3 channels, 2 classes), prepared in ")


def test_gray_folder_at_its_own_size_stays_one_channel_and_uint8(tmp_path, small_blocks):
    for i in range(5):
        save(noise_image(i, (5, 5), "L"), tmp_path / "g" / f"{i}.png")
    ds = P.open_prepared(P.prepare_dataset(str(tmp_path / "g"), workers=2, progress=False))
    ref = load_dataset(str(tmp_path / "g"))
    assert ds.pixels.shape == (5, 1, 5, 5) and torch.equal(ds.pixels, ref.pixels) and ds.labels is None


def test_sixteen_bit_rounds_like_as_uint8_for_every_level(tmp_path):
    """All 65,536 16-bit levels, at their own size and resized: stored as ImageDataset.as_uint8 rounds them."""
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    save(Image.fromarray(levels), tmp_path / "w" / "all.png")
    for size in (None, 100):
        ds = P.open_prepared(P.prepare_dataset(str(tmp_path / "w"), size, progress=False, say=None))
        assert np.array_equal(ds.pixels.numpy(), load_dataset(str(tmp_path / "w"), size).as_uint8())


def test_large_jpegs_decode_at_reduced_scale_close_to_a_full_decode(tmp_path):
    """A JPEG well above the margin decodes through Image.draft: a few levels from the full decode, with the crop
    box in the same place (also for an EXIF-rotated photo); one below it decodes exactly as load_dataset does."""
    small = save(noise_image(1, (178, 218)), tmp_path / "celeba.jpg", quality=90)
    assert np.array_equal(decode_fitted(small, 64), load_dataset(str(tmp_path), 64).as_uint8()[0].transpose(1, 2, 0))
    big = noise_image(2, (1300, 1000))
    big.paste((0, 0, 0), (640, 0, 660, 1000))  # a black bar 10 px right of the centre column
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees on load
    for name, extra in (("plain.jpg", {}), ("rotated.jpg", {"exif": exif.tobytes()})):
        save(big, tmp_path / "big" / name, quality=92, **extra)
    ref = load_dataset(str(tmp_path / "big"), 32).as_uint8()  # full decodes, then Lanczos: plain, rotated
    for k, name in enumerate(["plain.jpg", "rotated.jpg"]):
        got = decode_fitted(tmp_path / "big" / name, 32)  # 1000 >= 4 * 4 * 32: decoded at 1/4 scale
        diff = np.abs(got.astype(int) - ref[k].transpose(1, 2, 0).astype(int))
        assert 0 < diff.max() <= 3 and diff.mean() < 0.5, (name, diff.max(), diff.mean())  # measured: 1, 0.13
    assert JPEG_DRAFT_MARGIN == 4


# --------------------------------------------------------------------------------------------------
# stale, unfinished and damaged sets


def test_added_removed_changed_files_and_another_size_mean_a_new_preparation(tmp_path, capsys):
    src = tmp_path / "d"
    for i in range(4):
        save(noise_image(i, (6, 6)), src / f"{i}.png")
    folder = P.prepare_dataset(str(src), 4, progress=False)
    first = manifest(folder)["pixels"]["file"]
    capsys.readouterr()

    def again(expect: int, why: str) -> None:
        assert P.prepare_dataset(str(src), 4, progress=False) == folder
        out = capsys.readouterr().out
        assert f"out of date ({why}" in out and out.count("\n") == 2, out
        ds = P.open_prepared(folder)
        assert len(ds) == expect and np.array_equal(ds.pixels.numpy(), load_dataset(str(src), 4).as_uint8())

    save(noise_image(9, (6, 6)), src / "9.png")
    again(5, "files were added, removed or changed")
    (src / "0.png").unlink()
    again(4, "files were added, removed or changed")
    save(noise_image(7, (6, 6)), src / "1.png")  # same name, new content
    os.utime(src / "1.png", ns=(1, 1))
    again(4, "files were added, removed or changed")
    assert not (folder / first).exists()  # the old array is gone, nothing else is left behind
    assert sorted(p.name for p in folder.iterdir() if p.name != ".lock") == sorted(
        [manifest(folder)["pixels"]["file"], "manifest.json"]
    )
    # another size is another set beside it; another resize method makes this one stale
    assert P.prepare_dataset(str(src), 3, progress=False, say=None) == src / ".ddpm" / "d-3px"
    P.RESIZE_METHOD, old = "something-else", P.RESIZE_METHOD
    try:
        again(4, "it was made with another resize method")
    finally:
        P.RESIZE_METHOD = old


def test_a_killed_preparation_is_never_used_and_resumes(tmp_path, small_blocks, monkeypatch):
    src = tmp_path / "k"
    for i in range(10):
        save(noise_image(i, (7, 7)), src / f"{i:02d}.png")
    killer = (
        "import os, sys\nimport ddpm.data.preparing as P\nP.BLOCK_ROWS, P.SYNC_EVERY_S = 2, 0.0\ncalls = [0]\n"
        "real = P.decode_fitted\ndef dying(path, size):\n    calls[0] += 1\n"
        "    if calls[0] == 7:\n        os._exit(9)  # like kill -9: no cleanup, nothing flushed\n"
        "    return real(path, size)\nP.decode_fitted = dying\n"
        "P.prepare_dataset(sys.argv[1], 5, workers=1, progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-c", killer, str(src)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 9, r.stderr
    folder = src / ".ddpm" / "k-5px"
    assert not (folder / "manifest.json").exists()
    with pytest.raises(ParameterError, match="no manifest.json .an unfinished preparation.; prepare it again"):
        P.open_prepared(folder)
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    # run again: the three blocks recorded are kept, the other two decoded
    decoded = []
    real = P.decode_fitted
    monkeypatch.setattr(P, "decode_fitted", lambda path, size: decoded.append(path) or real(path, size))
    P.prepare_dataset(str(src), 5, workers=1, progress=False, say=None)
    assert len(decoded) == 4
    assert np.array_equal(P.open_prepared(folder).pixels.numpy(), load_dataset(str(src), 5).as_uint8())
    assert not list(folder.glob("*.partial")) and not list(folder.glob("journal-*"))


def test_ctrl_c_keeps_the_blocks_done(tmp_path, small_blocks, monkeypatch):
    src = tmp_path / "c"
    for i in range(6):
        save(noise_image(i, (5, 5)), src / f"{i}.png")
    monkeypatch.setattr(P, "SYNC_EVERY_S", 0.0)
    calls = []
    real = P.decode_image

    def interrupted(path):
        calls.append(path)
        if len(calls) == 6:  # the native size's decode, two blocks, then Ctrl-C in the third
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(P, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        P.prepare_dataset(str(src), workers=1, progress=False, say=None)  # native size: decode_image
    assert not (src / ".ddpm" / "c-native" / "manifest.json").exists()
    calls.clear()
    monkeypatch.setattr(P, "decode_image", lambda path: calls.append(path) or real(path))
    ds = P.open_prepared(P.prepare_dataset(str(src), workers=1, progress=False, say=None))
    assert len(calls) == 1 + 2  # the first image again (the native size), then the last block
    assert torch.equal(ds.pixels, load_dataset(str(src)).pixels)


def test_damaged_prepared_files_are_refused_or_rebuilt(tmp_path, capsys):
    src = tmp_path / "x"
    for i in range(70):  # two blocks of 64 rows
        save(noise_image(i, (4, 4)), src / f"{i:03d}.png")
    folder = P.prepare_dataset(str(src), progress=False, say=None)
    pixels = folder / manifest(folder)["pixels"]["file"]
    good = pixels.read_bytes()

    def cli_error(*args) -> str:
        assert main(["train", "--data", *args, "--out", str(tmp_path / "run"), "--steps", "1", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        return err

    # truncated: named directly, a one-line error; through its source, rebuilt
    pixels.write_bytes(good[:-100])
    err = cli_error(str(folder))
    assert f"--data {folder} is not a usable prepared set: {pixels.name} has {len(good) - 100} bytes" in err
    P.prepare_dataset(str(src), progress=False)
    assert "out of date" in capsys.readouterr().out and P.open_prepared(folder).pixels.shape == (70, 3, 4, 4)
    # one flipped byte in the second block: the first block trains, the second is refused when first read
    pixels = folder / manifest(folder)["pixels"]["file"]
    body = bytearray(pixels.read_bytes())
    body[-5] ^= 0xFF
    pixels.write_bytes(bytes(body))
    ds = P.open_prepared(folder)
    ds.gather(torch.arange(64))
    with pytest.raises(UserError, match=r"damaged: images 64\.\.69 of pixels-\w+\.npy do not match their checksum"):
        ds.gather(torch.tensor([3, 65]))
    err = cli_error(str(folder), "--batch-size", "70")
    assert "do not match their checksum; delete" in err
    # a manifest that is not JSON: rebuilt
    (folder / "manifest.json").write_text("{not json")
    P.prepare_dataset(str(src), progress=False)
    assert "manifest.json cannot be read" in capsys.readouterr().out
    assert torch.equal(P.open_prepared(folder).gather(torch.arange(70)), load_dataset(str(src)).pixels)


def test_bad_files_stop_it_as_today_and_skip_bad_finishes_without_decoding_again(
    tmp_path, small_blocks, monkeypatch, capsys
):
    src = tmp_path / "b"
    for i in range(5):
        save(noise_image(i, (4, 4)), src / "one" / f"{i}.png")
    (src / "two").mkdir()
    (src / "two" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    save(noise_image(9, (4, 4)), src / "two" / "ok.png")
    assert main(["prepare", "--data", str(src), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: 1 file(s) in {src} could not be read as images: two/bad.png; fix or remove them, or "
        "pass --skip-bad to skip them\n"
    )
    decoded = []
    real = P.decode_image
    monkeypatch.setattr(P, "decode_image", lambda path: decoded.append(path) or real(path))
    assert main(["prepare", "--data", str(src), "--skip-bad", "--quiet"]) == 0
    assert len(decoded) == 1  # only the first image again, for the native size
    assert "skipped 1 unreadable file(s)" in capsys.readouterr().out
    folder = src / ".ddpm" / "b-native"
    m = manifest(folder)
    assert m["skipped"][0]["file"] == "two/bad.png" and m["skipped"][0]["reason"] == "OSError: Truncated File Read"
    ds, ref = P.open_prepared(folder), load_dataset(str(src), skip_bad=True)
    assert torch.equal(ds.pixels, ref.pixels) and ds.labels.tolist() == [0] * 5 + [1] and ds.skipped == ref.skipped
    with pytest.raises(ParameterError, match="could not be read as images: two/bad.png"):
        P.prepare_dataset(str(src), progress=False)  # reused without skip_bad: refused, as load_dataset would


def test_sizes_must_agree_at_the_native_size(tmp_path, capsys):
    save(noise_image(0, (4, 4)), tmp_path / "s" / "a.png")
    save(noise_image(1, (6, 6)), tmp_path / "s" / "b.png")
    assert main(["prepare", "--data", str(tmp_path / "s"), "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"error: images in {tmp_path / 's'} have different sizes (4x4, 6x6); pass "
        "--image-size N to resize and center-crop them to NxN\n"
    )
    save(noise_image(0, (6, 4)), tmp_path / "r" / "a.png")
    with pytest.raises(ParameterError, match="are 6x4, not square"):
        P.prepare_dataset(str(tmp_path / "r"), progress=False)
    assert not (tmp_path / "r" / ".ddpm").exists()  # a failed first attempt leaves nothing behind


def test_unwritable_beside_the_data_goes_to_the_cache_and_prepared_dir_chooses(tmp_path, monkeypatch, capsys):
    src = tmp_path / "ro"
    save(noise_image(0, (4, 4)), src / "a.png")
    (src / ".ddpm").write_text("a file where the folder would go: nothing can be written there")
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    folder = P.prepare_dataset(str(src), progress=False)
    assert folder.parent == tmp_path / "cache" / "prepared" and folder.name.startswith("ro-")
    assert folder.name.endswith("-native") and str(folder) in capsys.readouterr().out
    assert prepared_locations(str(src))[-1] == folder
    chosen = P.prepare_dataset(str(src), prepared_dir=tmp_path / "mine", progress=False, say=None)
    assert chosen.parent == tmp_path / "mine" and (chosen / "manifest.json").is_file()
    # the same flag through ddpm prepare and ddpm train finds the same set
    assert main(["prepare", "--data", str(src), "--prepared-dir", str(tmp_path / "mine"), "--quiet"]) == 0
    assert f"prepared in {chosen}" in capsys.readouterr().out


def test_built_in_sets_prepare_losslessly_and_train_bit_for_bit_as_in_memory(tmp_path):
    folder = P.prepare_dataset("digits", prepared_dir=tmp_path / "p", progress=False, say=None)
    ds, ref = P.open_prepared(folder), load_dataset("digits")
    assert ds.levels == 16 and torch.equal(ds.pixels, ref.pixels) and torch.equal(ds.labels, ref.labels)
    assert ds.name == ref.name and load_dataset(str(folder)).memory_mapped
    with pytest.raises(ParameterError, match="holds 8x8 images, not 16"):
        load_dataset(str(folder), 16)
    weights = [_train(tmp_path / name, data, steps=3) for name, data in (("mem", "digits"), ("map", str(folder)))]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# --------------------------------------------------------------------------------------------------
# training from a prepared folder


def _train(out: Path, data: str, steps: int, resume: bool = False, **kw) -> dict[str, torch.Tensor]:
    cfg = TrainConfig(
        out=str(out),
        data=data,
        preset="tiny",
        steps=steps,
        batch_size=8,
        warmup=2,
        sample_every=0,
        num_samples=2,
        sample_steps=2,
        device="cpu",
        bf16=False,
        progress=False,
        flip=True,
        class_cond=True,
        dropout=0.1,
        resume=resume,
        checkpoint_every=0,
        **kw,
    )
    return {k: v.clone() for k, v in train(cfg).model.state_dict().items()}


def _folder_of_classes(root: Path, n: int = 12) -> Path:
    for i in range(n):
        save(noise_image(i, (10, 9)), root / ("ab"[i % 2]) / f"{i}.png")
    return root


def test_training_on_a_folder_reads_its_prepared_set_bit_for_bit_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    src = _folder_of_classes(tmp_path / "f")
    mapped = _train(tmp_path / "mapped", str(src), 4, image_size=8)
    assert "prepared f (12 images, 8x8, 3 channels, 2 classes)" in capsys.readouterr().out
    _train(tmp_path / "split", str(src), 2, image_size=8)
    split = _train(tmp_path / "split", str(src), 4, resume=True, image_size=8)
    assert all(torch.equal(mapped[k], split[k]) for k in mapped)
    # the same run on today's in-memory set: the same batches, so the same weights
    import ddpm.train.batches as batches

    monkeypatch.setattr(batches, "training_data", lambda spec, size, skip, *_a, **_k: load_dataset(spec, size, skip))
    memory = _train(tmp_path / "memory", str(src), 4, image_size=8)
    assert all(torch.equal(mapped[k], memory[k]) for k in mapped)


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ddpm",
        "train",
        "--preset",
        "tiny",
        "--batch-size",
        "4",
        "--warmup",
        "2",
        "--sample-every",
        "0",
        "--sample-steps",
        "2",
        "--num-samples",
        "2",
        "--device",
        "cpu",
        "--no-bf16",
        "--quiet",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_torchrun_prepares_once_resumes_exactly_and_matches_one_process(tmp_path):
    src = _folder_of_classes(tmp_path / "f", 16)
    common = ["--data", str(src), "--image-size", "8", "--class-cond", "--flip"]
    r = _torchrun([*common, "--out", str(tmp_path / "straight"), "--steps", "4"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("prepared f (16 images") == 1 and len(list((src / ".ddpm").glob("*/pixels-*.npy"))) == 1
    for steps, extra in (("2", []), ("4", ["--resume"])):
        r = _torchrun([*common, "--out", str(tmp_path / "split"), "--steps", steps, *extra])
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.count("data: f (16 images") == 1 and "prepared f" not in r.stdout
    from ddpm.checkpoint import load_checkpoint

    a, b = load_checkpoint(tmp_path / "straight").model, load_checkpoint(tmp_path / "split").model
    assert all(torch.equal(a[k], b[k]) for k in a)
    one = train(
        TrainConfig(
            out=str(tmp_path / "one"),
            data=str(src),
            image_size=8,
            class_cond=True,
            flip=True,
            preset="tiny",
            batch_size=8,
            steps=4,
            warmup=2,
            sample_every=0,
            sample_steps=2,
            num_samples=2,
            device="cpu",
            bf16=False,
            progress=False,
        )
    ).model.state_dict()
    assert max((one[k] - a[k]).abs().max().item() for k in a) < 1e-4
    # rank 0's error reaches every rank: both stop with the same one-line error, without waiting for a timeout
    (src / "a" / "bad.png").write_bytes(b"junk")
    r = _torchrun([*common, "--out", str(tmp_path / "bad"), "--steps", "1"])
    assert r.returncode != 0 and r.stderr.count("error: 1 file(s) in") == 2, r.stderr[-3000:]


def test_decode_image_is_unchanged_for_files_below_the_margin(tmp_path):
    path = save(noise_image(3, (100, 60)), tmp_path / "a.jpg")
    from ddpm.images import fit_square

    assert np.array_equal(decode_fitted(path, 16), fit_square(decode_image(path), 16))  # 60 < 2 * 4 * 16
