"""`hpcdiff analyze`'s tables on a sweep with KNOWN numbers (tests/synthetic_sweep.py): the
CSV files are byte-for-byte the golden ones (tests/golden/analysis/, written by the
hand-made CSV writer before the tables moved to pandas), and the Markdown and LaTeX
versions hold the same rows and columns."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcdiff.analysis.report import analyze

import synthetic_sweep

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


def _csv_rows(path: Path) -> list[list[str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.reader(f))


def _md_rows(path: Path) -> list[list[str]]:
    """The cells of a pipe table (header first, the alignment row dropped)."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return [rows[0]] + rows[2:]


def test_markdown_holds_the_csv_cells(tables):
    """Same rows, columns and text as the CSV (configs.md shows mean ± std where the CSV has
    two columns: checked below; runs.md is the compact table: checked below)."""
    assert _md_rows(tables / "per_class.md") == _csv_rows(tables / "per_class.csv")


def test_runs_markdown_is_the_compact_table_of_the_csvs_runs(tables):
    """runs.md (and runs.tex) hold the compact columns a report takes, in the CSV's order of
    runs; the CSV keeps every column. The metrics are the CSV's, at fixed decimals."""
    header, *rows = _md_rows(tables / "runs.md")
    csv_header, *csv_rows = _csv_rows(tables / "runs.csv")
    assert header[:3] == ["#", "run", "label"] and {"state", "FID", "IS", "val loss", "wall"} <= set(header)
    assert len(header) < len(csv_header)
    assert [r[1] for r in rows] == [r[0] for r in csv_rows]
    for md, csv_row in zip(rows, csv_rows):
        md, full = dict(zip(header, md)), dict(zip(csv_header, csv_row))
        assert md["label"] == full["label"]
        for short, column, digits in (("FID", "best_fid_classifier", 1), ("val loss", "best_val_loss", 4)):
            assert md[short] == (f"{float(full[column]):.{digits}f}" if full[column] else "")


def test_configs_markdown_shows_mean_and_std(tables):
    header, *rows = _md_rows(tables / "configs.md")
    csv_header, *csv_rows = _csv_rows(tables / "configs.csv")
    assert len(rows) == len(csv_rows) == 2
    lo = dict(zip(header, rows[0]))
    csv_lo = dict(zip(csv_header, csv_rows[0]))
    assert lo["label"] == csv_lo["label"] == 'lr_lo, "q" & 50%'
    assert lo["best_fid_classifier"] == f"{csv_lo['best_fid_classifier_mean']} ± 2.4"
    assert dict(zip(header, rows[1]))["best_fid_classifier"] == ""  # no seed has a value


def _tex_rows(tex: str) -> list[str]:
    return [line for line in tex.splitlines() if line.endswith("\\\\")]


@pytest.mark.parametrize("stem", STEMS)
def test_latex_is_a_booktabs_tabular_with_escaped_text(tables, stem):
    tex = (tables / f"{stem}.tex").read_text()
    lines = tex.splitlines()
    assert lines[0].startswith("% ") and lines[1].startswith("\\begin{tabular}{")
    assert [line for line in lines if line.endswith("rule")] == ["\\toprule", "\\midrule", "\\bottomrule"]
    rows = _tex_rows(tex)
    n_columns = (
        len(_csv_rows(tables / f"{stem}.csv")[0]) if stem == "per_class" else len(_md_rows(tables / f"{stem}.md")[0])
    )
    assert len(rows) == len(_csv_rows(tables / f"{stem}.csv"))  # header + the same rows
    for line in rows:
        # The labels' "&" is escaped, so it does not make a column; no bare TeX specials.
        assert len(re.split(r"(?<!\\)&", line)) == n_columns, line
        assert not re.search(r"(?<!\\)[_%#^~]", line), line
        assert not re.search(r"(?<!\\)\$", line.replace("$\\pm$", "")), line
    if stem != "per_class":
        assert r"lr\_hi \#2 \textasciitilde x\textasciicircum y" in tex
        assert r'lr\_lo, "q" \& 50\%' in tex
        assert (r"best\_val\_loss" if stem == "configs" else "val loss") in tex


def test_latex_tables_compile_with_pdflatex(tables, tmp_path):
    """The real check that the escaping is right: pdflatex compiles every table with booktabs
    (Debian's texlive-latex-recommended; tests/run.sh installs it as root on Debian)."""
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex is not installed: apt-get install texlive-latex-recommended (tests/run.sh does)")
    body = "\n".join(f"\\input{{{tables / stem}.tex}}\\clearpage" for stem in STEMS)
    doc = tmp_path / "tables.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage[a0paper,landscape]{geometry}\n"
        "\\usepackage{booktabs}\n\\begin{document}\n" + body + "\n\\end{document}\n"
    )
    proc = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "tables.pdf").read_bytes()[:5] == b"%PDF-"
