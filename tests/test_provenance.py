"""The provenance a generated PNG carries: written in a fixed order, read back exactly, summarised for ddpm eval."""

from __future__ import annotations

import pytest

from ddpm.provenance import SETTINGS, Provenance
from ddpm.sampler_choice import SamplerChoice


def test_provenance_reads_back_what_it_writes():
    choice = SamplerChoice("dpmpp-2m-sde", "logsnr", 7, {"eta": 0.25})
    prov = Provenance("sample", 3, 11, choice, 2, 1.5, False, True, "ab" * 32)
    chunks = prov.text_chunks()
    assert list(chunks)[:6] == ["ddpm:kind", "ddpm:seed", "ddpm:index", "ddpm:sampler", "ddpm:spacing", "ddpm:steps"]
    assert chunks["ddpm:eta"] == "0.25" and chunks["ddpm:guidance"] == "1.5" and chunks["ddpm:clip_x0"] == "False"
    assert Provenance.from_text_chunks(chunks) == prov
    old = {k: v for k, v in chunks.items() if k != "ddpm:spacing"}  # a PNG from before spacing was recorded
    assert Provenance.from_text_chunks(old).choice.spacing == "linspace"


def test_settings_are_the_sampling_chunks_as_written_and_leave_out_the_picture():
    prov = Provenance(
        "sample",
        3,
        11,
        SamplerChoice("ddim", "info", 5, {"eta": 0.5}),
        None,
        None,
        True,
        False,
        "cd" * 32,
        version="9.9",
    )
    settings = prov.settings()
    assert settings == {
        "checkpoint_sha256": "cd" * 32,
        "sampler": "ddim",
        "spacing": "info",
        "steps": "5",
        "eta": "0.5",
        "guidance": "",
        "class": "",
        "clip_x0": "True",
        "ema": "False",
        "seed": "3",
        "version": "9.9",
    }
    assert set(settings) <= set(SETTINGS) and "index" not in settings and "kind" not in settings
    # Another picture of the same run has the same settings: ddpm eval compares folders by them.
    assert prov.of("sample", 12).settings() == settings
    assert prov.of("grid", "0-63", {"columns": "8"}).text_chunks()["ddpm:columns"] == "8"


def test_damaged_chunks_raise_key_or_value_errors():
    chunks = Provenance("sample", 1, 2, SamplerChoice("ddpm", "info", 4), None, None, True, True, "ab" * 32)
    good = chunks.text_chunks()
    with pytest.raises(KeyError):
        Provenance.from_text_chunks({k: v for k, v in good.items() if k != "ddpm:seed"})
    with pytest.raises(ValueError):
        Provenance.from_text_chunks({**good, "ddpm:steps": "four"})
