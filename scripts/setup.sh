#!/usr/bin/env bash
# Creates .venv (once) and installs the project with its test and peers extras into it, every dependency at the
# version the lock (constraints.txt) names, so a release elsewhere cannot change what a fresh clone gets.
# Re-running is quick: it reinstalls only when pyproject.toml or the lock changed. torch is pinned to 2.13.0,
# which on this project's CPU machines is a CPU build already on disk (a floating `torch` would download a
# multi-GB CUDA build). To move the lock to today's releases: bash scripts/lock.sh (then the suite decides).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setting up .venv from constraints.txt (torch 2.13.0, triton 3.6, numpy<2.3, test and peers extras)..."
  .venv/bin/python -m pip install -q -c constraints.txt --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0" -e ".[test,peers]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
