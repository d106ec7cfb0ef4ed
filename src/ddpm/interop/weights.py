"""Weights between ddpm and diffusers: our ``UNet`` state dict <-> ``UNet2DModel``'s, name by name (see
:mod:`ddpm.interop`)."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..unet import AttentionBlock, Downsample, ResBlock, UNet, Upsample

# ---------------------------------------------------------------------------- weights


def _module_pairs(net: UNet) -> list[tuple[str, str, nn.Module]]:
    """(our prefix, diffusers prefix, our module) for every leaf-level block of ``net``, in a fixed order."""
    pairs: list[tuple[str, str, nn.Module]] = [
        ("time_mlp.0", "time_embedding.linear_1", net.time_mlp[0]),
        ("time_mlp.2", "time_embedding.linear_2", net.time_mlp[2]),
        ("conv_in", "conv_in", net.conv_in),
    ]
    if net.label_emb is not None:
        pairs.append(("label_emb", "class_embedding", net.label_emb))
    level, j = 0, 0
    for k, layers in enumerate(cast(list[nn.ModuleList], net.down)):
        if isinstance(layers[0], Downsample):
            pairs.append((f"down.{k}.0", f"down_blocks.{level}.downsamplers.0", layers[0]))
            level, j = level + 1, 0
            continue
        for m, layer in enumerate(layers):
            kind = "resnets" if isinstance(layer, ResBlock) else "attentions"
            pairs.append((f"down.{k}.{m}", f"down_blocks.{level}.{kind}.{j}", layer))
        j += 1
    pairs += [
        ("mid.0", "mid_block.resnets.0", net.mid[0]),
        ("mid.1", "mid_block.attentions.0", net.mid[1]),
        ("mid.2", "mid_block.resnets.1", net.mid[2]),
    ]
    per_level = net.config.num_res_blocks + 1
    for k, layers in enumerate(cast(list[nn.ModuleList], net.up)):
        block, i = divmod(k, per_level)
        for m, layer in enumerate(layers):
            if isinstance(layer, ResBlock):
                name = f"resnets.{i}"
            elif isinstance(layer, AttentionBlock):
                name = f"attentions.{i}"
            else:
                assert isinstance(layer, Upsample)
                name = "upsamplers.0"
            pairs.append((f"up.{k}.{m}", f"up_blocks.{block}.{name}", layer))
    pairs += [("norm_out", "conv_norm_out", net.norm_out), ("conv_out", "conv_out", net.conv_out)]
    return pairs


# Our sub-module name -> diffusers', inside a residual block.
_RES_NAMES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "emb_proj": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "skip": "conv_shortcut",
}
# diffusers' attention names, today's first, then the 2022-era ones that older folders hold.
_ATTN_NAMES = {"q": ("to_q", "query"), "k": ("to_k", "key"), "v": ("to_v", "value"), "out": ("to_out.0", "proj_attn")}


def state_dict_from_diffusers(theirs: dict[str, Tensor], net: UNet) -> dict[str, Tensor]:
    """Our state dict (float32) for ``net``'s architecture from a diffusers UNet2DModel state dict.

    Every diffusers tensor must be used and every one of ours found, with the right shape.
    """
    ours_ref = net.state_dict()
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(*names: str) -> Tensor:
        for name in names:
            if name in theirs:
                used.add(name)
                return theirs[name]
        raise UserError(f"the diffusers weights have no tensor {names[0]} (the config and the weights disagree)")

    def put(ours: str, value: Tensor) -> None:
        want = ours_ref[ours].shape
        if value.numel() != want.numel():
            raise UserError(
                f"diffusers tensor for {ours} has shape {tuple(value.shape)}, expected {tuple(want)} "
                "(the config and the weights disagree)"
            )
        out[ours] = value.detach().to(torch.float32).reshape(want).clone()

    for mine, prefix, module in _module_pairs(net):
        if isinstance(module, ResBlock):
            for sub, their_sub in _RES_NAMES.items():
                if f"{mine}.{sub}.weight" in ours_ref:
                    for p in ("weight", "bias"):
                        put(f"{mine}.{sub}.{p}", take(f"{prefix}.{their_sub}.{p}"))
        elif isinstance(module, AttentionBlock):
            for p in ("weight", "bias"):
                put(f"{mine}.norm.{p}", take(f"{prefix}.group_norm.{p}"))
                qkv = [take(*(f"{prefix}.{n}.{p}" for n in _ATTN_NAMES[x])) for x in "qkv"]
                c = qkv[0].shape[0]
                put(f"{mine}.qkv.{p}", torch.cat([t.reshape(c, -1) if p == "weight" else t for t in qkv]))
                put(f"{mine}.proj.{p}", take(*(f"{prefix}.{n}.{p}" for n in _ATTN_NAMES["out"])))
        elif isinstance(module, Downsample | Upsample):
            for p in ("weight", "bias"):
                put(f"{mine}.conv.{p}", take(f"{prefix}.conv.{p}", f"{prefix}.Conv2d_0.{p}"))
        else:
            for p in ("weight", "bias"):
                if f"{mine}.{p}" in ours_ref:
                    put(f"{mine}.{p}", take(f"{prefix}.{p}"))
    extra = sorted(set(theirs) - used)
    if extra:
        raise UserError(
            f"the diffusers weights hold {len(extra)} tensor(s) the config does not explain, e.g. "
            f"{extra[0]}: the config and the weights disagree"
        )
    missing = sorted(set(ours_ref) - set(out))
    if missing:  # cannot happen while _module_pairs covers the UNet; guard against silent changes
        raise AssertionError(f"no diffusers tensor mapped to {missing[:3]}")
    return out


def state_dict_to_diffusers(ours: dict[str, Tensor], net: UNet) -> dict[str, Tensor]:
    """The diffusers UNet2DModel state dict (today's names) of our state dict ``ours`` for ``net``'s architecture."""
    out: dict[str, Tensor] = {}

    def put(name: str, value: Tensor) -> None:
        out[name] = value.detach().to(torch.float32).contiguous().clone()

    for mine, prefix, module in _module_pairs(net):
        if isinstance(module, ResBlock):
            for sub, their_sub in _RES_NAMES.items():
                if f"{mine}.{sub}.weight" in ours:
                    for p in ("weight", "bias"):
                        put(f"{prefix}.{their_sub}.{p}", ours[f"{mine}.{sub}.{p}"])
        elif isinstance(module, AttentionBlock):
            c = int(module.proj.out_channels)
            for p in ("weight", "bias"):
                put(f"{prefix}.group_norm.{p}", ours[f"{mine}.norm.{p}"])
                q, k, v = ours[f"{mine}.qkv.{p}"].reshape(3, c, -1).squeeze(-1).unbind(0)
                for name, t in (("to_q", q), ("to_k", k), ("to_v", v)):
                    put(f"{prefix}.{name}.{p}", t)
                put(f"{prefix}.to_out.0.{p}", ours[f"{mine}.proj.{p}"].reshape(c, -1).squeeze(-1))
        elif isinstance(module, Downsample | Upsample):
            for p in ("weight", "bias"):
                put(f"{prefix}.conv.{p}", ours[f"{mine}.conv.{p}"])
        else:
            for p in ("weight", "bias"):
                if f"{mine}.{p}" in ours:
                    put(f"{prefix}.{p}", ours[f"{mine}.{p}"])
    return out
