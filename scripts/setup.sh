#!/usr/bin/env bash
# Creates .venv (once) and installs the project with its test and peers extras into it. Re-running is quick: it
# reinstalls only when pyproject.toml changed. torch is pinned to 2.13.0, which on this project's CPU machines is
# a CPU build already on disk (a floating `torch` would download a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setting up .venv (torch 2.13.0, triton 3.6, numpy<2.3, test and peers extras)..."
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0" -e ".[test,peers]"
  touch "$stamp"
fi
