#!/usr/bin/env bash
# Refreshes the lock, constraints.txt: resolves the project's dependencies (pyproject.toml, with the test and
# peers extras) anew in a throwaway venv, as a fresh machine would today, and writes the version of every package
# it got. scripts/setup.sh, and so CI, install exactly those. A refresh lands only if the suite passes on it:
#
#   bash scripts/lock.sh && rm -rf .venv && bash .ci/run
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q "torch==2.13.0" -e ".[test,peers]"
{
  echo "# The lock: every dependency's version as resolved by scripts/lock.sh on $(date -u +%F) with"
  echo "# $("$tmp/venv/bin/python" --version). scripts/setup.sh installs with '-c constraints.txt'."
  echo "# Do not edit by hand: rerun scripts/lock.sh, then the suite (bash .ci/run) decides whether it lands."
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | sed -E 's/^(torch==[^+]*)\+cpu$/\1/' | sort -f
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages); now: rm -rf .venv && bash .ci/run"
