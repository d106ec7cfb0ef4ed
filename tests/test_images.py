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


# ---------------------------------------------------------------------------- user pictures, as training reads them


def _pictures(folder):
    """Pictures of every kind training reads: RGB of odd sizes, RGBA, gray with alpha, 16-bit gray, palette with a
    transparent index, and a JPEG stored sideways with an EXIF rotate tag."""
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (60, 41, 4), dtype=np.uint8)).save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 2), dtype=np.uint8), mode="LA").save(folder / "la.png")
    Image.fromarray(rng.integers(0, 65536, (33, 47), dtype=np.uint16)).save(folder / "deep.png")
    pal = Image.fromarray(rng.integers(0, 8, (16, 24), dtype=np.uint8), mode="P")
    pal.putpalette(list(rng.integers(0, 256, 24)))
    pal.save(folder / "pal.png", transparency=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(rng.integers(0, 256, (30, 70, 3), dtype=np.uint8)).save(folder / "sideways.jpg", exif=exif)
    return sorted(folder.iterdir())


def test_decode_and_fit_are_what_training_does(tmp_path):
    """decode_picture and fit_square give, value for value, what `ddpm train` reads from a folder of images."""
    from ddpm.data.folders import decode_fitted, decode_image
    from ddpm.images import decode_picture, fit_square

    for path in _pictures(tmp_path / "pics"):
        with Image.open(path) as im:
            im.load()
            ours = decode_picture(im)
        theirs = decode_image(path)
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), path.name
        for size in (8, 16, 33):
            assert np.array_equal(fit_square(ours, size), decode_fitted(path, size)), (path.name, size)
    assert decode_image(tmp_path / "pics" / "sideways.jpg").shape[:2] == (70, 30)  # the rotate tag is applied


def test_load_image_resizes_as_training_or_refuses(tmp_path):
    from ddpm.errors import UserError
    from ddpm.images import decode_picture, fit_square, load_image, load_mask, picture_size

    pics = {p.name: p for p in _pictures(tmp_path / "pics")}
    with Image.open(pics["rgb.png"]) as im:
        want = fit_square(decode_picture(im), 16)
    got = load_image(pics["rgb.png"], 3, 16, resize=True)
    assert got.shape == (16, 16, 3) and np.array_equal(got, want)
    gray = load_image(pics["rgb.png"], 1, 16, resize=True)
    assert np.array_equal(gray[:, :, 0], np.asarray(Image.fromarray(want).convert("L")))
    assert load_image(pics["deep.png"], 3, 8, resize=True).shape == (8, 8, 3)  # gray to colour, 16 bits to 8
    assert picture_size(pics["sideways.jpg"]) == (30, 70)
    try:
        load_image(pics["rgb.png"], 3, 16)
        raise AssertionError("expected a refusal")
    except UserError as e:
        assert "is 53x37 but the model makes 16x16 images: resize it to 16x16 first" in str(e)
    # A mask of the picture's size is brought to the model's the same way; the model's own size is used as it is.
    mask = np.zeros((37, 53), np.uint8)
    mask[:, 26:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    m = load_mask(tmp_path / "mask.png", 16, picture=(53, 37))
    assert m.shape == (16, 16) and m[:, -1].all() and not m[:, 0].any()
    try:
        load_mask(tmp_path / "mask.png", 16, picture=(20, 20))
        raise AssertionError("expected a refusal")
    except UserError as e:
        assert "make the mask 16x16 or 20x20 (the picture's size)" in str(e)
