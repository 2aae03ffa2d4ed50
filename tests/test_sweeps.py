"""The sweep appends, resumes without losing or repeating rows, records failures, and plots."""

import dataclasses

import pandas as pd
import pytest

import plots.__main__ as plots_main
from kernels import OPS
from sweeps import runner
from sweeps.runner import KEY


@pytest.fixture(scope="module")
def spec():
    return OPS["layer_norm"]


def test_interrupted_sweep_resumes(tmp_path, spec, monkeypatch):
    out = tmp_path / "ln.csv"
    full = tmp_path / "full.csv"
    runner.run([spec], full, modes=["fwd", "bwd"])
    expected = pd.read_csv(full, dtype={"params": str})
    assert (expected["error"].isna()).all(), expected["error"].dropna().tolist()

    # Interrupt after 3 rows: the fourth append raises, as Ctrl-C would.
    real_to_csv, written = pd.DataFrame.to_csv, []

    def to_csv(self, path, *args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(1)
        return real_to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    with pytest.raises(KeyboardInterrupt):
        runner.run([spec], out, modes=["fwd", "bwd"])
    monkeypatch.undo()
    assert len(pd.read_csv(out)) == 3

    runner.run([spec], out, modes=["fwd", "bwd"])
    resumed = pd.read_csv(out, dtype={"params": str})
    assert not resumed.duplicated(KEY).any()
    assert sorted(map(tuple, resumed[KEY].values.tolist())) == sorted(map(tuple, expected[KEY].values.tolist()))
    first_three = resumed.iloc[:3]
    assert (first_three["timestamp"] <= resumed.iloc[3:]["timestamp"].min()).all()  # kept, not rewritten
    # Every speedup was computed against an eager time from the same or the earlier (interrupted) run.
    assert resumed.loc[resumed["provider"] == "ours", "speedup"].notna().all()
    assert set(resumed["device"]) == {"interpreter"}


def test_failures_are_rows(tmp_path, spec):
    def broken(*args, **kwargs):
        raise MemoryError("pretend out of memory")

    def no_library():
        raise ImportError("pretend the peer's library is missing")

    bad = dataclasses.replace(spec, name="broken_norm", fn=broken,
                              peers={"unavailable": lambda: None, "no_library": no_library})
    out = runner.run([bad], tmp_path / "bad.csv", modes=["fwd"])
    df = pd.read_csv(out)
    ours = df[df["provider"] == "ours"]
    assert ours["error"].str.contains("MemoryError").all() and ours["ms"].isna().all()
    assert "unavailable" not in set(df["provider"])  # a peer that declares itself unavailable is skipped
    assert df[df["provider"] == "no_library"]["error"].str.contains("ImportError").all()
    assert df[df["provider"] == "eager"]["ms"].notna().all()  # the sweep went on


def test_plot_writes_both_figures(tmp_path, spec):
    out = runner.run([spec], tmp_path / "p.csv", modes=["fwd"])
    plots_main.main([str(out), "--out", str(tmp_path / "p.png")])
    assert (tmp_path / "p.png").stat().st_size > 10_000
    assert (tmp_path / "p_roofline.png").stat().st_size > 10_000
