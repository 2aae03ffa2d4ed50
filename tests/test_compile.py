"""Every kernel compiles for an H100 (sm_90), checked without a GPU: here in fp32 at a shape no tile divides,
every launch the autotuner may run there; ``tests/test_report.py`` in bf16 at the sweep's shapes, every config.

Runs ``tests/compile_check.py`` in a fresh process (it needs the compiler backend, not the interpreter). On a
GPU the real suite compiles everything anyway, so this runs only where there is none.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from triton_playground.kernels import OPS
from triton_playground.kernels import _runtime as rt


# variants the host picks from sizes, which the op's compile_examples exist to reach (a flag of the variant)
REACHED = {"attention": "DQ_ADD", "attention_varlen": "WHOLE"}


@pytest.mark.skipif(rt.GPU, reason="on a GPU every test compiles the kernels for real")
@pytest.mark.parametrize("name", list(OPS))
def test_compiles_for_h100(name):
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "tests.compile_check", name], cwd=root, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    if name in REACHED:
        compiled = next(line for line in proc.stdout.splitlines() if line.startswith(f"{name}: compiled"))
        assert f" {REACHED[name]}]" in compiled or f" {REACHED[name]} " in compiled, compiled
