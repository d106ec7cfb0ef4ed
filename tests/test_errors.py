"""Errors (ddpm.errors): a ParameterError names parameters; each front end renders them in its own words."""

import pytest

from ddpm.errors import ParameterError, UserError, check_at_least


def cli(name: str) -> str:
    """The CLI's default rule: parameter batch_size is the flag --batch-size."""
    return "--" + name.replace("_", "-")


def test_str_shows_the_plain_parameter_names():
    e = ParameterError("{steps} must lie in 1..1000; got 0 (see {batch_size})")
    assert str(e) == "steps must lie in 1..1000; got 0 (see batch_size)"
    assert e.template == "{steps} must lie in 1..1000; got 0 (see {batch_size})"


def test_render_replaces_every_name_and_nothing_else():
    e = ParameterError("{resample} needs {mask}: {resample} > 1 is RePaint; values like [0, 1] and {1, 2} stay")
    assert e.render(cli) == "--resample needs --mask: --resample > 1 is RePaint; values like [0, 1] and {1, 2} stay"
    flags = {"label": "--class"}
    e = ParameterError("{label} 7 is out of range; {batch_size} is fine")
    assert e.render(lambda n: flags.get(n, cli(n))) == "--class 7 is out of range; --batch-size is fine"


def test_it_is_a_user_error_and_a_value_error():
    with pytest.raises(UserError):
        raise ParameterError("{x} is bad")
    with pytest.raises(ValueError, match="^x is bad$"):
        raise ParameterError("{x} is bad")


def test_check_at_least():
    check_at_least("num", 1, 1)  # the bound itself passes
    with pytest.raises(ParameterError) as info:
        check_at_least("batch_size", 0, 1, " (images per forward pass)")
    assert str(info.value) == "batch_size must be at least 1 (images per forward pass); got 0"
    assert info.value.render(cli) == "--batch-size must be at least 1 (images per forward pass); got 0"
