"""benchmarks/paper_table.py: every row is a configuration `ddpm train` accepts, the paired column is the mean and
standard error of per-image differences, and BENCHMARKS.md's table is what the script reports from its results."""

from __future__ import annotations

import json
import math

import paper_table
import pytest
from harness import REPO, RESULTS

from ddpm.cli import build_parser
from ddpm.cli.flags import config_values
from ddpm.train import TrainConfig


@pytest.mark.parametrize("row", list(paper_table.ROWS))
def test_each_row_is_a_training_configuration(row, tmp_path):
    """The row's flags parse as `ddpm train` flags and pass TrainConfig's checks (a typo would fail the row hours
    into the script)."""
    flags, _paper = paper_table.ROWS[row]
    args = build_parser().parse_args(["train", "--data", "fashion-mnist", "--out", str(tmp_path), *flags])
    cfg = TrainConfig(**config_values(args, TrainConfig))
    cfg.validate()
    given = dict(zip(flags[::2], flags[1::2], strict=True))
    assert cfg.prediction == given.get("--prediction", "eps")
    assert cfg.loss == given.get("--loss", "simple")
    assert cfg.variance == given.get("--variance", "fixed-small")


def test_paired_column_is_mean_and_standard_error_of_differences():
    base = {"per_image_bits_per_dim": [3.0, 4.0, 5.0, 6.0]}
    row = {"per_image_bits_per_dim": [2.9, 3.7, 4.9, 5.5]}  # differences −0.1, −0.3, −0.1, −0.5
    mean = -0.25
    sd = math.sqrt(((0.15) ** 2 + (0.05) ** 2 + (0.15) ** 2 + (0.25) ** 2) / 3)
    assert paper_table._paired(row, base) == f"{mean:+.3f} ± {sd / 2:.3f}"
    assert paper_table._paired(None, base) == "–"
    assert paper_table._paired({"per_image_bits_per_dim": [1.0]}, base) == "–"  # not the same images


def test_benchmarks_md_table_is_the_scripts_report_of_the_committed_results():
    results = RESULTS / "paper_table.jsonl"
    table = paper_table.report(results)
    assert len(table.splitlines()) == 2 + len({json.loads(x)["row"] for x in results.read_text().splitlines()})
    assert table in (REPO / "BENCHMARKS.md").read_text()
