import pytest
import torch
from safetensors.torch import save_file

from ddpm.checkpoint import (
    checkpoint_meta,
    load_checkpoint,
    load_model,
    load_training_state,
    read_meta,
    resolve_checkpoint,
    save_checkpoint,
    save_training_state,
    state_path,
)
from ddpm.errors import UserError
from ddpm.schedule import Schedule
from ddpm.unet import UNet


def test_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    model = {"a.weight": torch.randn(3, 4, generator=g), "b": torch.arange(5)}
    ema = {"a.weight": torch.randn(3, 4, generator=g), "b": torch.arange(5) * 2}
    meta = {"step": 7, "model": {"base_channels": 8, "channel_mult": [1, 2]}, "class_names": ["x", "y"]}
    path = save_checkpoint(tmp_path / "checkpoints" / "step-000000007.safetensors", model, ema, meta)
    ck = load_checkpoint(path)
    assert ck.step == 7 and ck.meta["class_names"] == ["x", "y"] and ck.meta["version"] == 1
    assert ck.model.keys() == model.keys() and all(torch.equal(ck.model[k], model[k]) for k in model)
    assert all(torch.equal(ck.ema[k], ema[k]) for k in ema)
    assert resolve_checkpoint(tmp_path) == path  # a run directory means its latest checkpoint
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left behind


def test_one_metadata_builder_gives_what_sampling_needs(tmp_path):
    """checkpoint_meta is what training and `ddpm convert` write: load_model rebuilds the network and schedule
    from it alone, and the keys come in one order (the JSON is byte-stable)."""
    net = UNet.from_preset("tiny", channels=3, image_size=16, num_classes=4)
    schedule = Schedule.cosine(40)
    meta = checkpoint_meta(
        12, net.config, schedule, "v", class_names=list("abcd"), data="folder", world_size=2, bf16=True
    )
    assert list(meta) == [
        "step",
        "model",
        "schedule",
        "prediction",
        "image_size",
        "channels",
        "normalization",
        "class_names",
        "data",
        "world_size",
        "bf16",
    ]
    assert (meta["image_size"], meta["channels"], meta["prediction"]) == (16, 3, "v")
    weights = net.state_dict()
    path = save_checkpoint(tmp_path / "c.safetensors", weights, {k: v.clone() for k, v in weights.items()}, meta)
    model, ck, loaded = load_model(path)
    assert model.config == net.config and ck.meta["class_names"] == list("abcd") and ck.step == 12
    assert torch.equal(loaded.betas, schedule.betas)
    assert checkpoint_meta(0, net.config, schedule, "eps")["class_names"] is None


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(UserError, match="not a ddpm checkpoint"):
        load_checkpoint(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(UserError, match="no 'ddpm' metadata"):
        read_meta(plain)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="holds no checkpoints"):
        load_checkpoint(tmp_path)


def test_training_state_is_loaded_without_pickle_code(tmp_path):
    path = state_path(tmp_path / "step-000000001.safetensors")
    assert path.name == "step-000000001.state.pt"
    state = {
        "step": 1,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]},
        "rng": torch.get_rng_state(),
    }
    save_training_state(path, state)
    back = load_training_state(path)
    assert back["step"] == 1 and torch.equal(back["rng"], state["rng"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.state.pt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(UserError, match="cannot be read safely"):
        load_training_state(bad)
