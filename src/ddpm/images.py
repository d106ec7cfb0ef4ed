"""Pictures: uint8 conversion, grids, PNG files with metadata, strips and GIFs.

Arrays handed to Pillow are uint8 in (H, W, C) or (B, H, W, C) layout, C = 1 or 3.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, PngImagePlugin, UnidentifiedImageError
from torch import Tensor

from .errors import UserError
from .files import atomic_write


def to_8bit(x: Tensor) -> Tensor:
    """Images (B, C, H, W) in [-1, 1] as 8-bit pixels, uint8 on their device: round((x + 1)·127.5), clipped.

    Rounding (not truncation) makes the map the inverse of loading: pixel p -> p/127.5 - 1 -> p.
    """
    return ((x.detach().float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def to_uint8(images: Tensor, channels_last: bool = True) -> np.ndarray:
    """:func:`to_8bit` of images in [-1, 1], (B, C, H, W), as a numpy uint8 (B, H, W, C) array (or (B, C, H, W) with
    ``channels_last=False``)."""
    x = to_8bit(images).cpu()
    return x.permute(0, 2, 3, 1).numpy() if channels_last else x.numpy()


def grid_scale(size: int) -> int:
    """How many times a picture of ``size`` px is enlarged in a grid: up to about 64 px, never shrunk."""
    return max(1, 64 // size)


def make_grid(
    images: np.ndarray, nrow: int | None = None, padding: int = 1, pad_value: int = 0, scale: int = 1
) -> np.ndarray:
    """Tile uint8 images (B, H, W, C) into one (H', W', C) grid of ``nrow`` columns (default ~√B).

    ``scale`` enlarges every pixel to scale×scale (nearest), so 8×8 digits stay visible.
    """
    if images.ndim != 4:
        raise ValueError(f"make_grid takes (B, H, W, C) images; got shape {images.shape}")
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    b, h, w, c = images.shape
    ncol = nrow or max(1, math.ceil(math.sqrt(b)))
    nrows = math.ceil(b / ncol)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value, np.uint8)
    for i in range(b):
        r, q = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def _pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def save_png(path: str | os.PathLike[str], image: np.ndarray, metadata: dict[str, str] | None = None) -> Path:
    """Write a uint8 (H, W, C) image as PNG with ``metadata`` in tEXt chunks, atomically (temp + rename)."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(str(key), str(value))
    return atomic_write(path, lambda tmp: _pil(image).save(tmp, format="PNG", pnginfo=info), durable=False)


def read_png_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The text chunks of a PNG written by :func:`save_png`."""
    with Image.open(path) as im:
        im.load()
        return dict(getattr(im, "text", {}) or {})


def save_gif(
    path: str | os.PathLike[str], frames: Sequence[np.ndarray], duration_ms: int = 80, hold_last_ms: int = 1000
) -> Path:
    """Write uint8 frames (each (H, W, C)) as a looping animated GIF, holding the last frame longer."""
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    path = Path(path)
    pil = [_pil(f) for f in frames]
    durations = [duration_ms] * (len(pil) - 1) + [hold_last_ms]
    return atomic_write(
        path,
        lambda tmp: pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:], duration=durations, loop=0),
        durable=False,
    )


def plot_curve(
    xs: Sequence[float],
    ys: Sequence[float],
    width: int = 640,
    height: int = 360,
    title: str = "loss",
    log_y: bool = True,
) -> np.ndarray:
    """A line chart of ys against xs as a uint8 (H, W, 3) image, drawn with Pillow (no plotting library).

    With ``log_y`` the y axis is logarithmic (diffusion losses fall over decades). Axis ticks show the
    first and last x and the min and max y.
    """
    return plot_lines(xs, {"": ys}, width, height, title, log_y)


LINE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_lines(
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    width: int = 640,
    height: int = 360,
    title: str = "",
    log_y: bool = True,
) -> np.ndarray:
    """:func:`plot_curve` with several lines against the same xs, one per entry of ``series`` (its name in a legend
    where it has one), on common axes."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    named = any(series)
    left, right, top, bottom = 70, width - (170 if named else 15), 25, height - 35
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    draw.text((left, 5), title, fill="black")
    lines = {
        name: [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)
               if math.isfinite(float(y)) and (float(y) > 0 or not log_y)]
        for name, ys in series.items()
    }  # fmt: skip
    pts = [p for line in lines.values() for p in line]
    if len({x for x, _ in pts}) < 2:
        return np.asarray(img)
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    ymin, ymax = min(p[1] for p in pts), max(p[1] for p in pts)
    lo, hi = fy(ymin), fy(ymax)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5

    def to_px(p: tuple[float, float]) -> tuple[float, float]:
        return (left + (p[0] - x0) / (x1 - x0) * (right - left), bottom - (fy(p[1]) - lo) / (hi - lo) * (bottom - top))

    for k, (name, line) in enumerate(lines.items()):
        colour = LINE_COLOURS[k % len(LINE_COLOURS)]
        if len(line) >= 2:
            draw.line([to_px(p) for p in line], fill=colour, width=2)
        if name:
            draw.line([right + 10, top + 6 + 16 * k, right + 28, top + 6 + 16 * k], fill=colour, width=3)
            draw.text((right + 33, top + 16 * k), name[:22], fill="black")
    draw.text((5, top), f"{ymax:.4g}", fill="black")
    draw.text((5, bottom - 10), f"{ymin:.4g}", fill="black")
    draw.text((left, bottom + 8), f"{x0:g}", fill="black")
    draw.text((right - 60, bottom + 8), f"{x1:g}", fill="black")
    return np.asarray(img)


# ---------------------------------------------------------------------------- reading user images

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})  # plus every "I;16*" variant


def decode_picture(im: Image.Image) -> np.ndarray:
    """An opened picture as training reads it: (H, W) gray or (H, W, 3) colour, values 0..255 (uint8, or float32
    for 16-bit and wider gray). The EXIF orientation is applied (phone photos are often stored sideways with a rotate
    tag), and transparent pixels are composited onto white."""
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):  # 16-bit (or wider) grayscale: scale, don't clip
        wide = np.asarray(im, dtype=np.float64) / 257.0  # 65535 -> 255 exactly
        return np.clip(wide, 0.0, 255.0).astype(np.float32)
    if "transparency" in im.info or mode in ("PA", "RGBa", "La"):
        im = im.convert("LA" if mode in _GRAY_MODES else "RGBA")
        mode = im.mode
    if mode in ("LA", "RGBA"):
        rgba = np.asarray(im)
        colour, alpha = rgba[..., :-1].astype(np.float32), rgba[..., -1:].astype(np.float32) / 255.0
        out = np.rint(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        return out[..., 0] if mode == "LA" else out
    return np.asarray(im.convert("L" if mode in _GRAY_MODES else "RGB"))


def fit_square(array: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W[, C]) picture so that its shorter side is ``size`` and centre-crop it to (size, size[, C]), in
    one Lanczos resize of the centred square (a crop alone where no resize is needed): what training does to a
    folder of images with ``--image-size``. uint8 in, uint8 out; float32 (0..255) in, float32 out."""
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) / 2, (w - side) / 2
    if side == size and top == int(top) and left == int(left):
        return array[int(top) : int(top) + size, int(left) : int(left) + size]
    img = Image.fromarray(array, mode="F") if array.dtype == np.float32 else Image.fromarray(array)
    box = (left, top, left + side, top + side)
    out = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS, box=box))
    return np.clip(out, 0.0, 255.0).astype(np.float32) if array.dtype == np.float32 else out


def load_image(path: str | os.PathLike[str], channels: int, size: int, resize: bool = False) -> np.ndarray:
    """Read a picture as uint8 (size, size, C) with C = ``channels`` (1: grayscale, 3: RGB), any input mode, decoded
    as training decodes it (:func:`decode_picture`; 16-bit levels are rounded to 8 bits).

    A picture of another size is brought to ``size`` as training does (:func:`fit_square`) with ``resize``; without
    it, a mismatch is a :class:`~ddpm.errors.UserError` that says to resize.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels!r}")
    im = _open_user_image(path, "image")
    with im:
        array = decode_picture(im)
    h, w = array.shape[:2]
    if (w, h) != (size, size) and not resize:
        raise UserError(
            f"{path} is {w}x{h} but the model makes {size}x{size} images: resize it to "
            f"{size}x{size} first, or let ddpm do it as training does (drop --no-resize)"
        )
    return conform(array, channels, size)


def conform(array: np.ndarray, channels: int, size: int) -> np.ndarray:
    """A decoded picture (H, W) or (H, W, 3) (uint8, or float32 0..255) as training reads it at ``size`` px with
    ``channels`` channels: uint8 (size, size, channels), brought to the size by :func:`fit_square` where it differs,
    gray repeated to RGB or RGB converted to gray (Pillow's L) where the channels differ."""
    h, w = array.shape[:2]
    if (w, h) != (size, size):
        array = fit_square(array, size)
    array = np.rint(array).astype(np.uint8) if array.dtype != np.uint8 else array
    if channels == 1:
        gray = array if array.ndim == 2 else np.asarray(Image.fromarray(array).convert("L"))
        return gray[:, :, None]
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array


def picture_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of a picture as training sees it (after its EXIF orientation)."""
    im = _open_user_image(path, "image")
    with im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)  # 5-8: rotated by a quarter turn
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_mask(path: str | os.PathLike[str], size: int, picture: tuple[int, int] | None = None) -> np.ndarray:
    """Read an inpainting mask as bool (size, size): True (white, level >= 128 in grayscale) = regenerate.

    Any mode is accepted (converted to grayscale first). It must be ``size``×``size``, or, where ``picture`` gives the
    (width, height) of a picture that is brought to ``size`` (:func:`load_image` with ``resize``), that picture's
    size, and is then brought to ``size`` the same way before the threshold.
    """
    im = _open_user_image(path, "mask")
    with im:
        gray = np.asarray(ImageOps.exif_transpose(im).convert("L"), dtype=np.uint8)
    h, w = gray.shape
    if (w, h) == (size, size):
        return gray >= 128
    if picture is not None and (w, h) == tuple(picture):
        return fit_square(gray, size) >= 128
    also = (
        f" or {picture[0]}x{picture[1]} (the picture's size)"
        if picture is not None and tuple(picture) != (size, size)
        else ""
    )
    raise UserError(
        f"mask {path} is {w}x{h} but the image is {size}x{size}: make the mask {size}x{size}{also} "
        "(white = regenerate, black = keep)"
    )


def _open_user_image(path: str | os.PathLike[str], what: str) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist: pass a PNG or JPEG file")
    try:
        im = Image.open(p)
        im.load()
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{what} {p} is not a readable picture ({type(e).__name__}): pass a PNG or JPEG file") from None
    return im


def from_uint8(images: np.ndarray) -> Tensor:
    """Inverse of :func:`to_uint8`: uint8 (B, H, W, C) -> float32 (B, C, H, W) in [-1, 1] (p -> p/127.5 − 1)."""
    if images.ndim != 4:
        raise ValueError(f"from_uint8 takes (B, H, W, C) images; got shape {images.shape}")
    return pixels_to_unit(np.array(images, dtype=np.uint8, copy=True).transpose(0, 3, 1, 2))


def pixels_to_unit(pixels: np.ndarray | Tensor) -> Tensor:
    """uint8 (B, C, H, W) 8-bit pixels -> float32 (B, C, H, W) in [-1, 1] (p -> p/127.5 − 1), on their device."""
    return torch.as_tensor(pixels).float() / 127.5 - 1


# ---------------------------------------------------------------------------- pictures of the process


def trajectory_columns(num_states: int, columns: int = 10) -> list[int]:
    """``min(columns, num_states)`` distinct indices evenly spaced over 0..num_states-1, first and last included."""
    if num_states < 1 or columns < 1:
        raise ValueError(f"need at least one state and one column; got {num_states}, {columns}")
    k = min(columns, num_states)
    if k == 1:
        return [num_states - 1]
    return sorted({round(j * (num_states - 1) / (k - 1)) for j in range(k)})


def trajectory_strip(
    xs: Sequence[np.ndarray], x0s: Sequence[np.ndarray], scale: int = 1, padding: int = 1, pad_value: int = 128
) -> np.ndarray:
    """Two rows of uint8 (H, W, C) pictures, x_t on top and x̂_0 below, one column per state: (H', W', C)."""
    if len(xs) != len(x0s) or not xs:
        raise ValueError(f"need as many x_t as x̂_0 pictures (and at least one); got {len(xs)} and {len(x0s)}")
    return make_grid(np.stack([*xs, *x0s]), nrow=len(xs), padding=padding, pad_value=pad_value, scale=scale)


def side_by_side(
    left: np.ndarray, right: np.ndarray, scale: int = 1, padding: int = 1, pad_value: int = 128
) -> np.ndarray:
    """One GIF frame: uint8 (H, W, C) ``left`` | ``right``, enlarged ``scale`` times: (H', W', C)."""
    return make_grid(np.stack([left, right]), nrow=2, padding=padding, pad_value=pad_value, scale=scale)


def from_nhwc(arr: np.ndarray, source: str) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) with C in {1, 3} → (N, C, H, W)."""
    if arr.dtype != np.uint8:
        raise UserError(f"{source} holds {arr.dtype} values: save 8-bit images (uint8 0..255, NHWC)")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise UserError(f"{source} has shape {arr.shape}: expected uint8 images (N, H, W, C) with C = 1 or 3")
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def read_npz_images(path: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """The images of an .npz as uint8 (N, C, H, W): its array named 'images' (what ``ddpm sample --npz`` writes, NHWC),
    or its only array; and that array's name. Read without pickle."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise UserError(
                    f"{path} holds arrays {', '.join(keys)} but none named 'images': name the uint8 NHWC array 'images'"
                )
            arr = z[key]
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} as an .npz ({e})") from None
    if len(arr) == 0:
        raise UserError(f"{path} holds no images")
    return from_nhwc(arr, str(path)), key
