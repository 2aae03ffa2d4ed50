"""A plain install (no extras) is a working library: ``from triton_playground import kernels, models``, ``triton-playground sweep`` and
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
        sys.argv = ["sweeps", "layer_norm", "--modes", "fwd", "--max-seqlen", "1024", "--out", {str(csv)!r}]
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


# --- the package's name beside Hugging Face's `kernels` (transformers 5 installs it) ---------------------------

HF_FAMILIES = ("GPT2LMHeadModel", "OPTForCausalLM", "PersimmonForCausalLM", "OlmoeForCausalLM")


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    """A fresh interpreter of this venv, started in ``cwd`` (the repository root or any other folder)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_the_venv_has_transformers_5_and_hf_kernels():
    """What the lock installs: the environment in which the old top-level ``kernels`` broke."""
    from importlib.metadata import version

    assert int(version("transformers").split(".")[0]) >= 5
    assert version("kernels")  # Hugging Face's package: raises PackageNotFoundError if the lock lost it


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_our_package_and_every_hf_family_import_in_one_process(where, tmp_path):
    proc = _python(f"""
        import kernels
        from triton_playground import kernels as ours, models
        from transformers import {", ".join(HF_FAMILIES)}
        assert callable(ours.attention) and callable(models.patch_hf)
        assert hasattr(kernels, "get_kernel"), kernels.__file__  # HF's package, not ours
        assert "triton_playground" not in kernels.__file__
        print("ok")
    """, ROOT if where == "root" else tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_transformers_imported_first(tmp_path):
    """transformers 5's model classes import triton (through Hugging Face's kernels package) before ours can
    choose the interpreter: our kernels still run there, tl.sum's helpers included (a norm), and agree."""
    proc = _python("""
        import sys, torch
        from transformers import GPT2LMHeadModel
        assert "triton" in sys.modules  # what makes this case: triton came first
        from triton_playground import kernels
        x, w, b = torch.randn(8, 64), torch.randn(64), torch.randn(64)
        error = (kernels.layer_norm(x, w, b, 1e-5) - torch.nn.functional.layer_norm(x, (64,), w, b, 1e-5)).abs().max()
        assert error < 1e-5, error
        print("ok")
    """, tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_patch_hf_runs_from_another_folder(tmp_path):
    proc = _python("""
        import torch, transformers
        from triton_playground import models
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=16, vocab_size=64)
        hf = transformers.GPT2LMHeadModel(config).eval()
        ids = torch.randint(0, 64, (1, 8))
        with torch.no_grad():
            before = hf(ids).logits
            after = models.patch_hf(hf)(ids).logits
        error = ((after - before).norm() / before.norm()).item()
        assert error < 1e-4, error
        print("ok", error)
    """, tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("command", ["sweep", "plot", "report"])
def test_console_script_help_from_another_folder(command, tmp_path):
    script = Path(sys.executable).parent / "triton-playground"
    proc = subprocess.run([str(script), command, "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"usage: triton-playground {command}")


def test_console_script_lists_its_commands_and_refuses_an_unknown_one(tmp_path):
    script = Path(sys.executable).parent / "triton-playground"
    listing = subprocess.run([str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and all(c in listing.stdout for c in ("sweep", "plot", "report"))
    wrong = subprocess.run([str(script), "swep"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "unknown command 'swep'" in wrong.stderr and not wrong.stdout


def test_the_wheel_installs_one_top_level_package(tmp_path):
    """What ``pip install .`` puts in site-packages: triton_playground and its metadata, nothing else (tests/
    stays out; no kernels/, models/, sweeps/ or plots/ beside it)."""
    import shutil
    import zipfile

    source = tmp_path / "source"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "out", "__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("triton_playground-*.whl")
    archive = zipfile.ZipFile(wheel)
    dist_info = next(n.split("/")[0] for n in archive.namelist() if n.split("/")[0].endswith(".dist-info"))
    assert {n.split("/")[0] for n in archive.namelist()} == {"triton_playground", dist_info}
    assert "triton_playground/kernels/ops/attention/kernel.py" in archive.namelist()
    assert "triton-playground = triton_playground.cli:main" in archive.read(f"{dist_info}/entry_points.txt").decode()
