"""TrainConfig: each bad setting is refused by name (the CLI shows its flag), and the network overrides."""

from __future__ import annotations

import pytest

from ddpm.errors import ParameterError, UserError
from ddpm.train import TrainConfig


@pytest.mark.parametrize(
    ("change", "named", "says"),
    [
        ({"out": ""}, "out", "is required"),
        ({"batch_size": 0}, "batch_size", "must be at least 1; got 0"),
        ({"warmup": -1}, "warmup", "must be >= 0; got -1"),
        ({"lr": 2.0}, "lr", "must lie in (0, 1); got 2.0"),
        ({"adam_beta2": 1.0}, "adam_beta2", "must be in [0, 1)"),
        ({"lr_schedule": "step"}, "lr_schedule", "'step': choose one of constant, cosine, linear"),
        ({"nonfinite": "ignore"}, "nonfinite", "must be 'stop' or 'skip'"),
        ({"base_channels": 0}, "base_channels", "must be at least 1; got 0"),
        ({"channel_mult": "1,x"}, "channel_mult", "takes comma-separated positive integers (e.g. 1,2,2); got '1,x'"),
        ({"init_from": "ck", "res_blocks": 2}, "init_from", "keeps its checkpoint's network"),
    ],
)
def test_bad_settings_are_named(change, named, says):
    with pytest.raises(ParameterError) as e:
        TrainConfig(**{"out": "run", **change}).validate()
    assert named in e.value.template and says in str(e.value)
    flag = "--" + named.replace("_", "-")
    assert flag in e.value.render(lambda n: "--" + n.replace("_", "-"))


def test_unknown_names_are_plain_user_errors():
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        TrainConfig(out="run", preset="huge").validate()
    with pytest.raises(UserError, match="unknown schedule 'quadratic'"):
        TrainConfig(out="run", schedule="quadratic").validate()


def test_network_overrides_map_settings_to_network_fields():
    cfg = TrainConfig(
        out="run",
        base_channels=16,
        channel_mult="1, 2,4",
        res_blocks=3,
        attention="none",
        norm_groups=8,
        scale_shift_norm=False,
    )
    assert cfg.network_overrides() == {
        "base_channels": 16,
        "num_res_blocks": 3,
        "groups": 8,
        "channel_mult": (1, 2, 4),
        "attention_resolutions": (),
        "scale_shift_norm": False,
    }
    assert TrainConfig(out="run", attention="7,8").network_overrides() == {"attention_resolutions": (7, 8)}
    assert TrainConfig(out="run").network_overrides() == {}


def test_the_schedule_follows_the_settings():
    linear = TrainConfig(out="run", timesteps=10, beta_start=0.01, beta_end=0.1).make_schedule()
    assert linear.timesteps == 10 and float(linear.betas[0]) == pytest.approx(0.01)
    assert float(linear.betas[-1]) == pytest.approx(0.1)
    assert TrainConfig(out="run", schedule="cosine", timesteps=20).make_schedule().to_dict()["kind"] == "cosine"
