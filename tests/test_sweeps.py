"""The sweep appends, resumes without losing or repeating rows, records failures and retries them, and plots;
the command line refuses what it cannot run."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import triton_playground.plots.__main__ as plots_main
from triton_playground.kernels import OPS, _runtime
from triton_playground.sweeps import plan, runner
from triton_playground.sweeps.modeled import Modeled
from triton_playground.sweeps.store import KEY
from triton_playground.sweeps.timing import Timer

# The runner's mechanics (resume, failures, retries) under the cheapest measurer: interpreter timings at tiny sizes.
TIMER = Timer()


@pytest.fixture(scope="module")
def spec():
    return OPS["layer_norm"]


def test_interrupted_sweep_resumes(tmp_path, spec, monkeypatch):
    out = tmp_path / "ln.csv"
    full = tmp_path / "full.csv"
    runner.run([spec], full, modes=["fwd", "bwd"], measurer=TIMER)
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
        runner.run([spec], out, modes=["fwd", "bwd"], measurer=TIMER)
    monkeypatch.undo()
    assert len(pd.read_csv(out)) == 3

    runner.run([spec], out, modes=["fwd", "bwd"], measurer=TIMER)
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
    out = runner.run([bad], tmp_path / "bad.csv", modes=["fwd"], measurer=TIMER)
    df = pd.read_csv(out)
    ours = df[df["provider"] == "ours"]
    assert ours["error"].str.contains("MemoryError").all() and ours["ms"].isna().all()
    assert "unavailable" not in set(df["provider"])  # a peer that declares itself unavailable is skipped
    assert df[df["provider"] == "no_library"]["error"].str.contains("ImportError").all()
    assert df[df["provider"] == "eager"]["ms"].notna().all()  # the sweep went on


def test_a_sweep_plots(tmp_path, spec):
    out = runner.run([spec], tmp_path / "p.csv", modes=["fwd"], measurer=TIMER)
    plots_main.main([str(out), "--out", str(tmp_path / "p.png")])
    assert (tmp_path / "p_layer_norm.png").stat().st_size > 10_000
    assert (tmp_path / "p_summary.csv").exists()


# ------------------------------------------------------------------------------------------------ retrying failures


def test_failed_rows_are_retried_on_resume(tmp_path, spec, capsys):
    out = tmp_path / "retry.csv"

    def broken(*args, **kwargs):
        raise MemoryError("pretend out of memory")

    runner.run([dataclasses.replace(spec, fn=broken)], out, modes=["fwd"], max_seqlen=16, measurer=TIMER)
    first = pd.read_csv(out, dtype={"params": str})
    first_text = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert first.loc[first["provider"] == "ours", "error"].str.contains("MemoryError").all()
    assert first.loc[first["provider"] == "eager", "error"].isna().all()

    # the op works now: its failed rows are run again
    runner.run([spec], out, modes=["fwd"], max_seqlen=16, measurer=TIMER)
    retried = pd.read_csv(out, dtype={"params": str})
    assert not retried.duplicated(KEY).any()
    assert sorted(map(tuple, retried[KEY].values.tolist())) == sorted(map(tuple, first[KEY].values.tolist()))
    assert retried["error"].isna().all(), retried["error"].dropna().tolist()
    ours = retried[retried["provider"] == "ours"]
    assert ours["ms"].notna().all() and ours["speedup"].notna().all()
    # the rows that had finished are kept as they were, to the character, not measured again
    retried_text = pd.read_csv(out, dtype=str, keep_default_na=False)
    eager_before = first_text[first_text["provider"] == "eager"].reset_index(drop=True)
    eager_after = retried_text[retried_text["provider"] == "eager"].reset_index(drop=True)
    pd.testing.assert_frame_equal(eager_after, eager_before)

    capsys.readouterr()
    runner.run([spec], out, modes=["fwd"], max_seqlen=16, measurer=TIMER)  # everything finished: nothing to add
    printed = capsys.readouterr().out
    assert "wrote" not in printed and "nothing new" in printed
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype={"params": str}), retried)


# ------------------------------------------------------------------------------------------------ the command line

ROOT = Path(__file__).resolve().parent.parent


def sweep_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "triton_playground.sweeps", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("selection, names_the_valid_ones", [
    (["--modes", "forward"], "choose from fwd, bwd, fwd+bwd"),
    (["--providers", "ourz"], "choose from eager, ours, compile"),
])
def test_cli_unknown_mode_or_provider_is_an_error(tmp_path, selection, names_the_valid_ones):
    out = tmp_path / "m.csv"
    result = sweep_cli("layer_norm", *selection, "--out", str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert names_the_valid_ones in result.stderr
    assert "wrote" not in result.stdout and not out.exists()


def test_cli_selection_without_cases_fails(tmp_path):
    out = tmp_path / "m.csv"
    result = sweep_cli("layer_norm", "--max-seqlen", "4", "--out", str(out))
    assert result.returncode != 0, result.stdout + result.stderr
    assert "nothing to run" in result.stderr
    assert "wrote" not in result.stdout and not out.exists()


def test_cli_max_seqlen_extends_the_cpu_cases(tmp_path):
    out = tmp_path / "long.csv"
    result = sweep_cli("layer_norm", "--interpreter-timings", "--modes", "fwd", "--providers", "ours",
                       "--max-seqlen", "64", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"wrote {out}" in result.stdout
    df = pd.read_csv(out, dtype={"params": str})
    cpu_seqlens = [d["seqlen"] for d in OPS["layer_norm"].sweep_cases(False)]
    assert max(cpu_seqlens) < 64  # else this test shows nothing
    assert sorted(set(df["seqlen"])) == sorted(set(cpu_seqlens) | {64})
    assert set(df["params"]) == {plan.params_of(d) for d in OPS["layer_norm"].sweep_cases(False)}  # same panels
    assert df["error"].isna().all(), df["error"].dropna().tolist()


def test_max_seqlen_only_filters_the_gpu_cases(spec):
    gpu_cases = spec.sweep_cases(True)
    assert plan.sweep_cases(spec, gpu=True, max_seqlen=1024) == [d for d in gpu_cases if d["seqlen"] <= 1024]
    assert plan.sweep_cases(spec, gpu=True) == gpu_cases
    assert plan.sweep_cases(spec, gpu=False) == spec.sweep_cases(False)


def test_cli_help_lists_providers_per_op():
    result = sweep_cli("--help")
    assert result.returncode == 0, result.stderr
    for name, op in plan.all_specs().items():
        assert f"  {name}: {', '.join(plan.providers(op, None))}\n" in result.stdout
    assert "--max-seqlen N" in result.stdout  # how the flag sizes the CPU cases is explained


@pytest.mark.skipif(not _runtime.INTERPRET, reason="bf16 is refused only under the interpreter")
def test_cli_refuses_bf16_under_the_interpreter(tmp_path):
    out = tmp_path / "bf16.csv"
    result = sweep_cli("layer_norm", "--interpreter-timings", "--dtypes", "bf16", "--out", str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "bfloat16 cannot run correctly under the Triton interpreter" in result.stderr
    assert not out.exists()


def test_cli_compiled_backward_is_timed(tmp_path):
    # torch.compile's backward frees its saved buffers, so timing it on a retained graph failed from seqlen 16
    # (where the compile becomes dynamic). Slow: inductor compiles C++ on the CPU, ~25 s on 2 cores.
    out = tmp_path / "compile.csv"
    result = sweep_cli("layer_norm", "--interpreter-timings", "--providers", "compile", "--modes", "bwd",
                       "--max-seqlen", "16", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    df = pd.read_csv(out, dtype={"params": str})
    compiled = df[df["provider"] == "compile"]
    assert sorted(compiled["seqlen"]) == [8, 16]
    assert compiled["error"].isna().all(), compiled["error"].dropna().tolist()
    assert (compiled["ms"] > 0).all()


# ------------------------------------------------------------------------------------------------ modeled rows


@pytest.mark.skipif(not _runtime.INTERPRET, reason="without a GPU the sweep counts and models")
def test_cli_without_a_gpu_writes_modeled_rows_at_real_sizes(tmp_path):
    out = tmp_path / "model.csv"
    result = sweep_cli("layer_norm", "rms_norm", "--max-seqlen", "1024", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model:H100" in result.stdout and "not a measured time" in result.stdout
    df = pd.read_csv(out, dtype={"params": str})
    assert df["error"].isna().all(), df["error"].dropna().tolist()
    assert set(df["device"]) == {"model:H100"} and set(df["dtype"]) == {"bf16"}
    quick = plan.sweep_cases(OPS["layer_norm"], gpu=True, max_seqlen=1024, full=False)  # the default plan's
    assert sorted(set(df.loc[df["op"] == "layer_norm", "seqlen"])) == sorted({d["seqlen"] for d in quick}) == [1024]
    assert set(df.loc[df["op"] == "layer_norm", "params"]) == {plan.params_of(d) for d in quick}
    for column in ("ms", "flops_useful", "bytes_exec", "bytes_min", "launches", "programs"):
        assert df[column].notna().all() and (df[column] >= 0).all(), column
    assert (df["bytes_exec"] >= df["bytes_min"]).all()  # no provider moves less than the least possible
    eager = df[df["provider"] == "eager"]
    assert (eager["speedup"] == 1.0).all()
    ours = df[df["provider"] == "ours"]
    # the modeled time is at least what its bytes take from HBM (these ops do no matrix products); L2 spares HBM
    # some of the counted bytes, never adds to them, and what reaches HBM is the least the op must move (within
    # the sampled counts' error: a sample of a launch's programs is scaled to the whole grid)
    from triton_playground.kernels.perf.model import H100
    assert (ours["bytes_dram"] <= ours["bytes_exec"]).all() and (ours["bytes_dram"] >= 0.98 * ours["bytes_min"]).all()
    assert (ours["ms"] >= 0.999 * 1e3 * ours["bytes_dram"] / H100.hbm_bytes_per_s).all()
    again = sweep_cli("layer_norm", "rms_norm", "--max-seqlen", "1024", "--out", str(out))
    assert "nothing new" in again.stdout, again.stdout + again.stderr


@pytest.mark.skipif(not _runtime.INTERPRET, reason="without a GPU the sweep counts and models")
def test_modeled_rows_refuse_torch_compile(tmp_path):
    out = runner.run([OPS["layer_norm"]], tmp_path / "c.csv", modes=["fwd"], max_seqlen=512,
                     wanted_providers=["compile"], measurer=Modeled(workers=1))
    df = pd.read_csv(out, dtype={"params": str})
    compiled = df[df["provider"] == "compile"]
    assert len(compiled) and compiled["error"].str.contains("torch.compile is not modeled").all()


def test_timed_rows_carry_the_counters(tmp_path, spec):
    """Timed rows (a GPU's; here the interpreter's) also carry the counted work of their case, from interpreter
    workers; their ms stays the timed one."""
    out = runner.run([spec], tmp_path / "t.csv", modes=["fwd", "bwd"], max_seqlen=16, measurer=TIMER)
    df = pd.read_csv(out, dtype={"params": str})
    assert set(df["device"]) == {TIMER.device}
    for column in ("bytes_exec", "bytes_min", "launches", "programs"):
        assert df[column].notna().all(), column
    assert (df["bytes_exec"] >= df["bytes_min"]).all()
    assert df["ms_p20"].notna().all()  # timed, not modeled


def test_a_sampled_count_below_the_least_work_is_an_error():
    """The MoE's sampled GEMM counts once came out below the op's least FLOPs (35.9 of 51.7 GFLOP): a row must say
    so, not show a speed. Whole counts and sampled counts at or above the least pass."""
    row = {"flops_exec": 35.9e9, "flops_useful": 51.7e9, "bytes_exec": 2.5e9, "bytes_min": 0.8e9,
           "counted": "11 of 7808 programs of 2 launches run"}
    with pytest.raises(RuntimeError, match="below the least FLOPs"):
        runner.check_sampled_count(row)
    runner.check_sampled_count({**row, "counted": "every program"})  # a whole count is what it is
    runner.check_sampled_count({**row, "flops_exec": 52e9})
    runner.check_sampled_count({**row, "flops_exec": 0})  # no tl.dot (a norm): its FLOPs are not counted
