"""Settings dataclasses declare each flag once: option() metadata, the marks derived from it, the generated flags."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from ddpm.cli.flags import add_config_flags, config_values, field_type
from ddpm.settings import marked, option
from ddpm.train.config import RESUME_MUST_MATCH, UNRECORDED_VALUES, TrainConfig


@dataclasses.dataclass
class _Toy:
    size: int = option("image size", default=8, resume=True)
    name: str | None = option("a name", default=None, metavar="NAME_OF_IT")
    mode: str = option("mode", default="a", choices=["a", "b"])
    flag: bool = option("a switch", default=False, resume=True)
    hidden: bool = option("not a flag", default=True, cli=False)
    items: list = option("built elsewhere", default_factory=list, cli=False)


def test_option_keeps_help_default_and_marks():
    f = {x.name: x for x in dataclasses.fields(_Toy)}
    assert f["size"].default == 8 and f["size"].metadata["help"] == "image size" and f["size"].metadata["resume"]
    assert _Toy().items == [] and _Toy().items is not _Toy().items  # default_factory, not a shared list
    assert marked(dataclasses.fields(_Toy), "resume") == ("size", "flag")


@pytest.mark.parametrize(
    ("annotation", "kind"),
    [("int", int), ("int | None", int), ("float | None", float), ("str", str), ("bool | None", bool), (bool, bool)],
)
def test_field_type_reads_optional_annotations(annotation, kind):
    assert field_type(annotation) is kind


def test_generated_flags_parse_to_the_dataclass():
    p = argparse.ArgumentParser()
    add_config_flags(p, _Toy)
    assert config_values(p.parse_args([]), _Toy) == {"size": 8, "name": None, "mode": "a", "flag": False}
    args = p.parse_args(["--size", "16", "--name", "x", "--mode", "b", "--flag"])
    assert _Toy(**config_values(args, _Toy)) == _Toy(16, "x", "b", True)
    assert p.parse_args(["--no-flag"]).flag is False
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "c"])
    with pytest.raises(SystemExit):
        p.parse_args(["--hidden"])
    text = p.format_help()
    assert "image size (default: 8)" in text and "--name NAME_OF_IT" in text and "--mode {a,b}" in text


def test_help_without_defaults_and_store_true_booleans():
    p = argparse.ArgumentParser()
    add_config_flags(p, _Toy, show_default=False, bool_action="store_true")
    assert "(default" not in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args(["--no-flag"])


def test_train_config_marks_are_the_settings_that_change_the_numbers():
    assert {"lr", "seed", "batch_size", "prediction", "data", "adam_beta2", "init_from"} <= set(RESUME_MUST_MATCH)
    # Where the run goes, how long it runs, and what it shows may change on resume.
    assert not {"out", "resume", "steps", "minutes", "progress", "sample_every", "device", "bf16"} & set(
        RESUME_MUST_MATCH
    )
    assert UNRECORDED_VALUES == {"adam_beta2": 0.999, "t_stratified": False, "preset": "tiny"}
    assert "grad_checkpoint" not in RESUME_MUST_MATCH  # memory and time, not the numbers
    p = argparse.ArgumentParser()
    add_config_flags(p, TrainConfig)
    cfg = TrainConfig(**config_values(p.parse_args(["--out", "r"]), TrainConfig))
    assert cfg == TrainConfig(out="r")
    assert "progress" not in cfg.record() and cfg.record()["lr"] == cfg.lr
