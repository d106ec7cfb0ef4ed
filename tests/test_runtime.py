"""Device choice, bf16 detection and the single-process case of the process-group helpers."""

from __future__ import annotations

import pytest
import torch

import ddpm.runtime as rt
from ddpm.errors import ParameterError, UserError


def test_bf16_default_follows_the_cpu(monkeypatch):
    """bf16 autocast is the default only where the CPU has bf16 instructions (else it is slower than float32)."""
    for caps, native in (({"avx512_bf16": True, "amx_bf16": False}, True), ({"amx_bf16": True}, True),
                         ({"avx512_bf16": False, "amx_bf16": False, "avx2": True}, False), ({}, False)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps)
        monkeypatch.setattr(rt.platform, "system", lambda: "Linux")
        monkeypatch.setattr(rt.platform, "machine", lambda: "x86_64")
        assert rt.cpu_bf16_native() is native
        assert rt.default_bf16(torch.device("cpu")) is native
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: 1 / 0)  # an old or odd PyTorch: assume none
    assert rt.cpu_bf16_native() is False
    assert rt.default_bf16(torch.device("meta")) is False


def test_pick_device_names_and_refusals(monkeypatch):
    assert rt.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert rt.pick_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device 'gpu0'"):
        rt.pick_device("gpu0")
    with pytest.raises(ParameterError) as e:
        rt.pick_device("cuda")
    assert str(e.value).startswith("device cuda was asked for") and e.value.render(lambda n: "--" + n).endswith(
        "use --device cpu")


def test_a_lone_process_is_rank_0_of_1_and_its_votes_are_its_own(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    px = rt.setup_processes("cpu")
    assert (px.rank, px.world, px.main, px.device) == (0, 1, True, torch.device("cpu"))
    assert px.any(True) is True and px.any(False) is False
    assert px.max_int(7) == 7
    px.barrier()  # a no-op alone
