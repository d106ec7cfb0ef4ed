"""What a generated picture was made from, and how to read it back.

Every PNG that ``ddpm sample`` / ``ddpm edit`` writes carries ``ddpm:*`` text chunks (:meth:`Provenance.text_chunks`):
the seed and image index, the sampler path (:class:`SamplerChoice`), label, guidance, clipping, weights and the
checkpoint's SHA-256. ``ddpm sample --reproduce`` reads them back with :meth:`Provenance.from_text_chunks`, and
``ddpm eval`` records them (:meth:`Provenance.settings`) as the protocol of a folder of samples.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from .sampler_choice import SamplerChoice, SampleSettings
from .version import __version__

# The chunks that describe how an image was sampled (not which picture it is): what ``ddpm eval`` records.
SETTINGS = (
    "checkpoint_sha256",
    "sampler",
    "spacing",
    "steps",
    "eta",
    "options",
    "guidance",
    "class",
    "clip_x0",
    "ema",
    "seed",
    "version",
)


@dataclass(frozen=True)
class Provenance:
    """What a picture was made from, written as its PNG's ``ddpm:*`` text chunks (:meth:`text_chunks`).

    ``kind`` is sample, grid, trajectory, interpolation or edit; ``index`` the image index (or a range, for a
    grid); ``extra`` holds the kind's own keys, written last.
    """

    kind: str
    seed: int
    index: int | str
    choice: SamplerChoice
    label: int | None
    guidance: float | None
    clip_x0: bool
    ema: bool
    checkpoint_sha256: str
    extra: Mapping[str, str] = field(default_factory=dict)
    version: str = __version__

    def text_chunks(self) -> dict[str, str]:
        """The text chunks in a fixed order (so a reproduced file is byte-identical).

        Keys: kind, seed, index, sampler, spacing, steps, eta (samplers that have one), options (JSON, when any
        besides eta), guidance, class, clip_x0, ema, checkpoint_sha256, version, then ``extra``.
        """
        c = self.choice
        meta = {
            "ddpm:kind": self.kind,
            "ddpm:seed": str(self.seed),
            "ddpm:index": str(self.index),
            "ddpm:sampler": c.name,
            "ddpm:spacing": c.spacing,
            "ddpm:steps": str(c.steps),
        }
        rest = {k: v for k, v in c.options.items() if k != "eta"}
        if "eta" in c.options:
            meta["ddpm:eta"] = repr(float(c.options["eta"]))
        if rest:
            meta["ddpm:options"] = json.dumps(rest, sort_keys=True)
        meta.update(
            {
                "ddpm:guidance": "" if self.guidance is None else repr(float(self.guidance)),
                "ddpm:class": "" if self.label is None else str(self.label),
                "ddpm:clip_x0": str(bool(self.clip_x0)),
                "ddpm:ema": str(bool(self.ema)),
                "ddpm:checkpoint_sha256": self.checkpoint_sha256,
                "ddpm:version": self.version,
            }
        )
        meta.update({f"ddpm:{k}": v for k, v in self.extra.items()})
        return meta

    def of(self, kind: str, index: int | str, extra: Mapping[str, str] | None = None) -> Provenance:
        """The same settings for another picture."""
        return dataclasses.replace(self, kind=kind, index=index, extra=dict(extra or {}))

    @classmethod
    def from_text_chunks(cls, info: Mapping[str, str]) -> Provenance:
        """Read back what :meth:`text_chunks` wrote (KeyError or ValueError when it is damaged). A PNG without
        ``ddpm:spacing`` comes from a ddpm that did not record it and always used ``linspace``."""
        options = json.loads(info.get("ddpm:options", "{}"))
        if "ddpm:eta" in info:
            options["eta"] = float(info["ddpm:eta"])
        choice = SamplerChoice(
            info["ddpm:sampler"], info.get("ddpm:spacing", "linspace"), int(info["ddpm:steps"]), options
        )
        index = info["ddpm:index"]
        return cls(
            info.get("ddpm:kind", "sample"),
            int(info["ddpm:seed"]),
            int(index) if index.isdigit() else index,
            choice,
            int(info["ddpm:class"]) if info.get("ddpm:class") else None,
            float(info["ddpm:guidance"]) if info.get("ddpm:guidance") else None,
            info.get("ddpm:clip_x0", "True") == "True",
            info.get("ddpm:ema", "True") == "True",
            info["ddpm:checkpoint_sha256"],
            version=info.get("ddpm:version", __version__),
        )

    def sample_settings(self, device: str = "auto") -> SampleSettings:
        """The sampling settings that make this picture again (on ``device``)."""
        c = self.choice
        options = {k: v for k, v in c.options.items() if k != "eta"}
        return SampleSettings(sampler=c.name, spacing=c.spacing, steps=c.steps, eta=c.options.get("eta"),
                              options=options, label=self.label, guidance=self.guidance, ema=self.ema,
                              clip_x0=self.clip_x0, device=device)  # fmt: skip

    def settings(self) -> dict[str, str]:
        """The :data:`SETTINGS` chunks as written in the PNG (text values, keys without ``ddpm:``)."""
        chunks = self.text_chunks()
        return {k: chunks[f"ddpm:{k}"] for k in SETTINGS if f"ddpm:{k}" in chunks}
