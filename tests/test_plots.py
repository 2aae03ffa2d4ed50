"""python -m plots: bad inputs get one line and exit code 2; CSVs of several devices or commits get a line each."""

import subprocess
import sys
from pathlib import Path

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

import plots.__main__ as plots_main
from sweeps.runner import COLUMNS

ROOT = Path(__file__).resolve().parent.parent
SEQLENS = (8, 16, 32)


def write_sweep(path: Path, device: str, commit: str, ours_speedup: float) -> Path:
    """A small sweep CSV as python -m sweeps writes it: eager and ours, one panel, three seqlens."""
    rows = [{"op": "layer_norm", "provider": provider, "mode": "fwd", "dtype": "fp32", "seqlen": seqlen,
             "params": '{"hidden": 256}', "ms": 1.0, "speedup": 1.0 if provider == "eager" else ours_speedup,
             "pct_roofline": 10.0 if provider == "eager" else 10.0 * ours_speedup, "device": device,
             "commit": commit, "timestamp": "2025-01-01T00:00:00+00:00", "error": ""}
            for provider in ("eager", "ours") for seqlen in SEQLENS]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------------------ bad inputs


def _missing(tmp_path):
    return tmp_path / "nope.csv"


def _empty(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    return tmp_path / "empty.csv"


def _not_a_sweep(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    return tmp_path / "other.csv"


def _directory(tmp_path):
    (tmp_path / "results").mkdir()
    return tmp_path / "results"


@pytest.mark.parametrize("make, says", [
    (_missing, "no such file"),
    (_empty, "is empty"),
    (_not_a_sweep, "is not a sweep CSV"),
    (_directory, "is a directory"),
], ids=["missing", "empty", "not-a-sweep", "directory"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, make, says):
    path = make(tmp_path)
    result = subprocess.run([sys.executable, "-m", "plots", str(path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and says in lines[0]
    assert not list(tmp_path.glob("*.png"))


# ------------------------------------------------------------------------------------------------ one line each


def _saved_figures(monkeypatch, argv) -> list[matplotlib.figure.Figure]:
    """Run python -m plots in-process and return the figures it saved (speedup first, then roofline)."""
    saved, real_savefig = [], matplotlib.figure.Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    plots_main.main(argv)
    return saved


@pytest.mark.parametrize("differ", ["device", "commit"])
def test_each_device_and_commit_gets_its_own_line(tmp_path, monkeypatch, differ):
    a = {"device": "NVIDIA H100", "commit": "aaaaaaa"}
    b = dict(a, **{differ: {"device": "NVIDIA A100", "commit": "bbbbbbb"}[differ]})
    first = write_sweep(tmp_path / "a.csv", **a, ours_speedup=2.0)
    second = write_sweep(tmp_path / "b.csv", **b, ours_speedup=0.5)

    figures = _saved_figures(monkeypatch, [str(first), str(second), "--out", str(tmp_path / "both.png")])
    assert len(figures) == 2
    for fig in figures:
        plotted = [line for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")]
        labels = sorted(line.get_label() for line in plotted)
        assert labels == sorted(f"{p} · {run[differ]}" for p in ("eager", "ours") for run in (a, b))
        for line in plotted:  # one point per seqlen, left to right: no zig-zag between the two runs
            assert list(line.get_xdata()) == list(SEQLENS)
        ours_a = next(line for line in plotted if line.get_label() == f"ours · {a[differ]}")
        scale = 1.0 if fig is figures[0] else 10.0
        np.testing.assert_allclose(ours_a.get_ydata(), [2.0 * scale] * len(SEQLENS))


def test_one_device_keeps_one_line_per_provider(tmp_path, monkeypatch):
    csv = write_sweep(tmp_path / "a.csv", device="NVIDIA H100", commit="aaaaaaa", ours_speedup=2.0)
    figures = _saved_figures(monkeypatch, [str(csv), "--out", str(tmp_path / "a.png")])
    for fig in figures:
        labels = sorted(line.get_label() for ax in fig.axes for line in ax.get_lines()
                        if not line.get_label().startswith("_"))
        assert labels == ["eager", "ours"]
