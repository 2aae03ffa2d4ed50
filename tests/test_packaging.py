"""A plain install (no extras) is a working library: ``import kernels, models``, ``triton-playground sweep`` and
``triton-playground plot`` need neither hypothesis nor transformers (test-only and optional-peer dependencies).

Each check runs in a fresh interpreter whose import system refuses those two packages, as on a machine where
``pip install .`` put only the core dependencies.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = textwrap.dedent("""
    import importlib.machinery
    import sys

    class _PathFinderWithout(importlib.machinery.PathFinder):
        # site-packages as if hypothesis and transformers were not installed: not found, by imports and by
        # importlib.util.find_spec (which torch uses to probe for optional packages) alike
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in ("hypothesis", "transformers"):
                return None
            return super().find_spec(name, path, target)

    sys.meta_path[:] = [_PathFinderWithout if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
""")


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "SWEEP_OUT": str(tmp_path)})


def test_the_hiding_works(tmp_path):
    proc = _run("import hypothesis", tmp_path)
    assert proc.returncode != 0 and "No module named 'hypothesis'" in proc.stderr


def test_library_imports_without_test_tooling(tmp_path):
    proc = _run("""
        from triton_playground import kernels, models
        import triton_playground.kernels.perf, triton_playground.models.sweep
        import triton_playground.sweeps.runner, triton_playground.plots.__main__
        assert callable(kernels.attention) and len(kernels.OPS) >= 7
        print("ok")
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("command", ["sweeps", "plots"])
def test_clis_run_without_test_tooling(command, tmp_path):
    csv = tmp_path / "s.csv"
    proc = _run(f"""
        import runpy, sys
        sys.argv = ["sweeps", "layer_norm", "--modes", "fwd", "--max-seqlen", "512", "--out", {str(csv)!r}]
        runpy.run_module("triton_playground.sweeps", run_name="__main__")
        if {command!r} == "plots":
            sys.argv = ["plots", {str(csv)!r}, "--out", {str(tmp_path / "s.png")!r}]
            runpy.run_module("triton_playground.plots", run_name="__main__")
    """, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert csv.exists()
    import pandas as pd

    errors = pd.read_csv(csv)["error"].dropna()
    assert errors.empty, errors.tolist()
    if command == "plots":
        assert list(tmp_path.glob("*.png"))
