import numpy as np
import torch
from PIL import Image

from ddpm.images import make_grid, plot_curve, read_png_metadata, save_gif, save_png, to_uint8


def test_to_uint8_rounds_and_inverts_loading():
    pixels = torch.arange(256, dtype=torch.float32)
    x = (pixels / 127.5 - 1).view(1, 1, 16, 16)
    assert to_uint8(x).reshape(-1).tolist() == list(range(256))
    # Values between levels round to the nearest one; out-of-range values are clipped.
    y = torch.tensor([-1.5, -1.0, 0.0, 0.99999, 1.5]).view(1, 1, 1, 5)
    assert to_uint8(y).reshape(-1).tolist() == [0, 0, 128, 255, 255]
    rgb = torch.zeros(2, 3, 4, 5)
    rgb[:, 1] = 1
    out = to_uint8(rgb)
    assert out.shape == (2, 4, 5, 3) and out[0, 0, 0].tolist() == [128, 255, 128]


def test_grid_layout():
    imgs = np.stack([np.full((2, 3, 1), i, np.uint8) for i in range(5)])
    g = make_grid(imgs, nrow=3, padding=1, pad_value=9)
    assert g.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
    assert g[1, 1, 0] == 0 and g[1, 5, 0] == 1 and g[4, 1, 0] == 3 and g[4, 5, 0] == 4
    assert g[0, 0, 0] == 9 and g[4, 9, 0] == 9  # padding, and the empty sixth cell
    big = make_grid(imgs[:1], padding=0, scale=4)
    assert big.shape == (8, 12, 1) and np.all(big == 0)


def test_png_metadata_and_gif(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    p = save_png(tmp_path / "a.png", img, {"ddpm:seed": "5"})
    assert read_png_metadata(p) == {"ddpm:seed": "5"}
    assert np.array_equal(np.asarray(Image.open(p)), img)
    gray = save_png(tmp_path / "g.png", img[:, :, :1])
    assert Image.open(gray).mode == "L"
    gif = save_gif(tmp_path / "a.gif", [img, 255 - img])
    with Image.open(gif) as im:
        assert im.n_frames == 2
    assert not list(tmp_path.glob(".*tmp*"))


def test_plot_curve_draws_a_falling_line():
    xs = list(range(100))
    ys = [1.0 / (1 + x) for x in xs]
    img = plot_curve(xs, ys, width=200, height=120)
    assert img.shape == (120, 200, 3) and img.dtype == np.uint8
    blue = (img[:, :, 2] > 150) & (img[:, :, 0] < 100)
    rows, cols = np.nonzero(blue)
    # The line starts high on the left and ends low on the right.
    assert rows[cols.argmin()] < rows[cols.argmax()]
    assert cols.min() < 80 and cols.max() > 170
