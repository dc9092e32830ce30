"""`hpcdiff analyze`'s tables on a sweep with KNOWN numbers (tests/synthetic_sweep.py): the
CSV files are byte-for-byte the golden ones (tests/golden/analysis/, written by the
hand-made CSV writer before the tables moved to pandas), and the Markdown and LaTeX
versions hold the same rows and columns."""

from __future__ import annotations

from pathlib import Path

import pytest

import synthetic_sweep
from hpcdiff.analysis.report import analyze

GOLDEN = Path(__file__).resolve().parent / "golden" / "analysis"
STEMS = ("runs", "configs", "per_class")


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("golden")
    out = root / "out"
    analyze(synthetic_sweep.build(root), out, figures=False)
    return out


@pytest.mark.parametrize("stem", STEMS)
def test_csv_tables_match_the_golden_files(tables, stem):
    assert (tables / f"{stem}.csv").read_bytes() == (GOLDEN / f"{stem}.csv").read_bytes()
