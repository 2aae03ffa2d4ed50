"""triton-playground plot: bad inputs get one line and exit code 2; CSVs of several devices or commits get a line each;
one figure per op; modeled and timed rows are separate lines; a provider's colour is fixed; the p20-p80 band only
where the rows have one; the summary's geometric means."""

import subprocess
import sys
from pathlib import Path

import matplotlib.colors
import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

import triton_playground.plots.__main__ as plots_main
from triton_playground.plots.figures import PROVIDER_COLORS, build_lines, provider_color, throughput_metric
from triton_playground.plots.summary import geomean, summary
from triton_playground.sweeps.runner import COLUMNS

ROOT = Path(__file__).resolve().parent.parent
SEQLENS = (8, 16, 32)


def sweep_rows(device: str, commit: str, ours_speedup: float, op: str = "layer_norm", **extra) -> list[dict]:
    """Rows as triton-playground sweep writes them: eager and ours, one panel, three seqlens (``extra``: more columns)."""
    return [{"op": op, "provider": provider, "mode": "fwd", "dtype": "fp32", "seqlen": seqlen,
             "params": '{"hidden": 256}', "ms": 1.0, "speedup": 1.0 if provider == "eager" else ours_speedup,
             "pct_roofline": 10.0 if provider == "eager" else 10.0 * ours_speedup, "device": device,
             "commit": commit, "timestamp": "2025-01-01T00:00:00+00:00", "error": "", **extra}
            for provider in ("eager", "ours") for seqlen in SEQLENS]


def write_rows(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return path


def write_sweep(path: Path, device: str, commit: str, ours_speedup: float) -> Path:
    return write_rows(path, sweep_rows(device, commit, ours_speedup))


def _labelled_lines(fig) -> list:
    """The provider lines of a figure's speedup panels (the throughput panels' lines are ``_``-labelled)."""
    return [line for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")]


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
    result = subprocess.run([sys.executable, "-m", "triton_playground.plots", str(path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and says in lines[0]
    assert not list(tmp_path.glob("*.png"))


# ------------------------------------------------------------------------------------------------ one line each


def _saved_figures(monkeypatch, argv) -> list[matplotlib.figure.Figure]:
    """Run triton-playground plot in-process and return the figures it saved (one per op)."""
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
    assert len(figures) == 1  # one op
    assert (tmp_path / "both_layer_norm.png").exists() and (tmp_path / "both_summary.csv").exists()
    plotted = _labelled_lines(figures[0])
    labels = sorted(line.get_label() for line in plotted)
    assert labels == sorted(f"{p} · {run[differ]}" for p in ("eager", "ours") for run in (a, b))
    for line in plotted:  # one point per seqlen, left to right: no zig-zag between the two runs
        assert list(line.get_xdata()) == list(SEQLENS)
    ours_a = next(line for line in plotted if line.get_label() == f"ours · {a[differ]}")
    np.testing.assert_allclose(ours_a.get_ydata(), [2.0] * len(SEQLENS))


def test_one_device_keeps_one_line_per_provider(tmp_path, monkeypatch):
    csv = write_sweep(tmp_path / "a.csv", device="NVIDIA H100", commit="aaaaaaa", ours_speedup=2.0)
    figures = _saved_figures(monkeypatch, [str(csv), "--out", str(tmp_path / "a.png")])
    for fig in figures:
        assert sorted(line.get_label() for line in _labelled_lines(fig)) == ["eager", "ours"]


# ------------------------------------------------------------------------------------------------ figures


def test_one_figure_per_op(tmp_path, monkeypatch):
    rows = sweep_rows("NVIDIA H100", "aaaaaaa", 2.0) + sweep_rows("NVIDIA H100", "aaaaaaa", 3.0, op="attention")
    csv = write_rows(tmp_path / "two.csv", rows)
    figures = _saved_figures(monkeypatch, [str(csv), "--out", str(tmp_path / "figs") + "/"])
    assert len(figures) == 2
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "two_attention.png", "two_layer_norm.png", "two_summary.csv"]
    titles = [fig._suptitle.get_text() for fig in figures]
    assert any(t.startswith("layer_norm") for t in titles) and any(t.startswith("attention") for t in titles)
    assert all("NVIDIA H100" in t and "fp32" in t for t in titles)


def test_modeled_and_timed_rows_are_two_lines(tmp_path, monkeypatch):
    rows = sweep_rows("model:H100", "aaaaaaa", 2.0) + sweep_rows("NVIDIA H100", "aaaaaaa", 1.5)
    lines = build_lines(pd.DataFrame(rows))
    ours = [line for line in lines if line.provider == "ours"]
    assert sorted(line.kind for line in ours) == ["measured", "modeled"]
    assert all(len(line.rows) == len(SEQLENS) for line in ours)

    csv = write_rows(tmp_path / "mixed.csv", rows)
    (fig,) = _saved_figures(monkeypatch, [str(csv), "--out", str(tmp_path / "m")])
    style = {line.get_label(): line.get_linestyle() for line in _labelled_lines(fig)}
    assert style == {"ours · model:H100 (modeled, not measured)": "--", "ours · NVIDIA H100": "-",
                     "eager · model:H100 (modeled, not measured)": "--", "eager · NVIDIA H100": "-"}
    assert "model:H100 (modeled, not measured)" in fig._suptitle.get_text()


def test_a_provider_keeps_its_colour_across_figures(tmp_path, monkeypatch):
    rows = (sweep_rows("NVIDIA H100", "aaaaaaa", 2.0) + sweep_rows("NVIDIA H100", "aaaaaaa", 3.0, op="attention")
            + [dict(r, provider="newcomer") for r in sweep_rows("NVIDIA H100", "aaaaaaa", 3.0, op="attention")])
    csv = write_rows(tmp_path / "c.csv", rows)
    figures = _saved_figures(monkeypatch, [str(csv), "--out", str(tmp_path / "c")])
    colours = [{line.get_label(): matplotlib.colors.to_hex(line.get_color()) for line in _labelled_lines(fig)}
               for fig in figures]
    assert colours[0]["ours"] == colours[1]["ours"] == PROVIDER_COLORS["ours"]
    assert colours[0]["eager"] == colours[1]["eager"] == PROVIDER_COLORS["eager"]
    assert colours[1]["newcomer"] == provider_color("newcomer") not in PROVIDER_COLORS.values()


def _bands(fig) -> int:
    return sum(len(ax.collections) for ax in fig.axes)


def test_band_only_where_rows_have_p20_and_p80(tmp_path, monkeypatch):
    plain = write_rows(tmp_path / "plain.csv", sweep_rows("NVIDIA H100", "aaaaaaa", 2.0))
    (fig,) = _saved_figures(monkeypatch, [str(plain), "--out", str(tmp_path / "plain")])
    assert _bands(fig) == 0

    timed = write_rows(tmp_path / "timed.csv", sweep_rows("NVIDIA H100", "aaaaaaa", 2.0, ms_p20=0.8, ms_p80=1.25))
    (fig,) = _saved_figures(monkeypatch, [str(timed), "--out", str(tmp_path / "timed")])
    assert _bands(fig) == 2  # eager and ours on the speedup panel (no throughput in these rows)
    speed_ax = next(ax for ax in fig.axes if ax.collections)
    ours = next(c for c in speed_ax.collections
                if matplotlib.colors.to_hex(c.get_facecolor()[0]) == PROVIDER_COLORS["ours"])
    ys = ours.get_paths()[0].vertices[:, 1]
    np.testing.assert_allclose([ys.min(), ys.max()], [2.0 / 1.25, 2.0 / 0.8])  # eager_ms / p80 .. eager_ms / p20


def test_error_rows_are_not_drawn(tmp_path, monkeypatch):
    rows = sweep_rows("NVIDIA H100", "aaaaaaa", 2.0)
    rows[-1] = dict(rows[-1], error="OutOfMemoryError: out of memory", speedup=float("nan"))
    csv = write_rows(tmp_path / "e.csv", rows)
    (fig,) = _saved_figures(monkeypatch, [str(csv), "--out", str(tmp_path / "e")])
    ours = next(line for line in _labelled_lines(fig) if line.get_label() == "ours")
    assert list(ours.get_xdata()) == list(SEQLENS[:-1])


def test_throughput_panel_picks_the_nearer_roof_and_draws_its_ceiling(tmp_path, monkeypatch):
    ceilings = {"copy_gbps": 3000.0, "matmul_tflops": 800.0}
    norm = pd.DataFrame(sweep_rows("model:H100", "a", 2.0, flops_useful=4e6, bytes_min=2e6, **ceilings))
    attention = pd.DataFrame(sweep_rows("model:H100", "a", 2.0, flops_useful=1e12, bytes_min=1e8, **ceilings))
    assert throughput_metric(norm) == ("gbps", "GB/s", "copy_gbps")
    assert throughput_metric(attention) == ("tflops", "TFLOP/s", "matmul_tflops")

    csv = write_rows(tmp_path / "t.csv", sweep_rows("model:H100", "a", 2.0, op="attention", flops_useful=1e12,
                                                    bytes_min=1e8, tflops=100.0, gbps=10.0, **ceilings))
    (fig,) = _saved_figures(monkeypatch, [str(csv), "--out", str(tmp_path / "t")])
    throughput_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "achieved TFLOP/s")
    dashed_flat = [line.get_ydata()[0] for line in throughput_ax.get_lines() if line.get_label() == "_ceiling"]
    assert dashed_flat == [800.0]


# ------------------------------------------------------------------------------------------------ summary


def test_summary_geometric_means(tmp_path, capsys):
    rows = [dict(r, flops_exec=0.0, flops_useful=1.0, bytes_exec=1.0, bytes_min=1.0)
            for r in sweep_rows("model:H100", "aaaaaaa", 1.0)]
    ours = [r for r in rows if r["provider"] == "ours"]
    for r, speedup, flops, nbytes in zip(ours, (2.0, 8.0, 5.0), (1.0, 4.0, 9.0), (2.0, 8.0, 9.0)):
        r.update(speedup=speedup, flops_exec=flops, bytes_exec=nbytes)
    ours[2]["error"] = "RuntimeError: boom"  # counted, left out of the means
    csv = write_rows(tmp_path / "s.csv", rows)
    plots_main.main([str(csv), "--out", str(tmp_path / "s")])

    table = pd.read_csv(tmp_path / "s_summary.csv").set_index("provider")
    assert table.loc["ours", "rows"] == 2 and table.loc["ours", "errors"] == 1
    assert table.loc["ours", "geomean_speedup"] == pytest.approx(4.0)  # sqrt(2 * 8)
    assert table.loc["ours", "flops_exec/useful"] == pytest.approx(2.0)  # sqrt(1 * 4)
    assert table.loc["ours", "bytes_exec/min"] == pytest.approx(4.0)  # sqrt(2 * 8)
    assert table.loc["eager", "geomean_speedup"] == pytest.approx(1.0)
    assert np.isnan(table.loc["eager", "flops_exec/useful"])  # no FLOPs counted: no mean, not 0
    out = capsys.readouterr().out
    assert "geomean_speedup" in out and "4.000" in out


def test_summary_has_no_work_ratios_for_timed_rows():
    rows = pd.DataFrame(sweep_rows("NVIDIA H100", "a", 3.0, flops_exec=2.0, flops_useful=1.0))
    table = summary(rows).set_index("provider")
    assert table.loc["ours", "geomean_speedup"] == pytest.approx(3.0)
    assert np.isnan(table.loc["ours", "flops_exec/useful"])
    assert np.isnan(geomean([0.0, -1.0, float("nan")]))


def test_results_tables_give_every_verdict_with_the_model_error_beside_it():
    """``triton-playground results``' sweep.md, from the committed sweep and validation: a row per op, mode and
    provider other than ours at the headline size, each modeled one with the model's held-out error; the stamp
    first."""
    from pathlib import Path

    from triton_playground import results

    here = Path(__file__).resolve().parent.parent / "docs" / "results"
    sweep = pd.read_csv(here / "sweep.csv", dtype={"params": str})
    errors = results.model_errors(pd.read_csv(here / "validation.csv"))
    head = results.headline(sweep, errors)
    wanted = {(op, mode, p) for (op, mode, p), _ in sweep.groupby(["op", "mode", "provider"]) if p != "ours"}
    assert set(zip(head["op"], head["mode"], head["versus"])) == wanted
    assert head["speedup"].gt(0).all() and head["model error"].str.match(r"x\d\.\d\d").all()
    assert head.loc[head["op"] == "moe", "model error"].str.endswith("(all ops)").sum() == 0  # validated: fused_moe
    text = results.sweep_markdown(sweep, errors, "STAMP", [here / "sweep_moe.png"])
    assert text.splitlines()[2] == "STAMP" and "![sweep_moe](sweep_moe.png)" in text
