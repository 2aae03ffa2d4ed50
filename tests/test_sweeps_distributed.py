"""A sweep sharded over torchrun's processes (sweeps/distributed.py): the ranks' rows merge into exactly the CSV
one process writes; a rerun resumes, with any number of processes; a rank killed mid-run loses only its unfinished
work. The torchrun test runs on the CPU (gloo, each rank under the interpreter: counted and modeled rows)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

import triton_playground.plots.__main__ as plots_main
from triton_playground.kernels import OPS
from triton_playground.sweeps import plan, runner
from triton_playground.sweeps.distributed import KILL_HOOK, assign
from triton_playground.sweeps.store import COLUMNS, KEY, ORDER, merge, shard_files, shard_path

ROOT = Path(__file__).resolve().parent.parent
# Real op names, as the CLI takes them; small cases (seqlen 512, forward, eager and ours) keep each run ~10 s.
SWEEP = ["layer_norm", "partial_rope", "--full", "--max-seqlen", "512", "--modes", "fwd", "--providers", "ours"]


def _sweep(out: Path, nproc: int | None, **env) -> subprocess.CompletedProcess:
    """``triton-playground sweep SWEEP --out out``, under ``torchrun --nproc-per-node nproc`` unless ``nproc`` is None."""
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                         str(nproc)]
    command = [sys.executable, *launcher, "-m", "triton_playground.sweeps", *SWEEP, "--out", str(out)]
    environ = {k: v for k, v in os.environ.items() if k != KILL_HOOK}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**environ, "OPENBLAS_NUM_THREADS": "1", **env})


def _keys(df: pd.DataFrame) -> list:
    return sorted(map(tuple, df[KEY].astype(str).values.tolist()))


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"params": str})


def test_torchrun_shards_merge_resume_and_survive_a_killed_rank(tmp_path):
    single = _sweep(tmp_path / "single.csv", None)
    assert single.returncode == 0, single.stdout + single.stderr
    expected = _read(tmp_path / "single.csv")
    assert len(expected) and expected["error"].isna().all(), expected["error"].dropna().tolist()
    assert set(expected["op"]) == {"layer_norm", "partial_rope"}
    assert set(expected["rank"]) == {0} and set(expected["world_size"]) == {1}

    # two ranks: their shards merge into exactly the single process's rows
    out = tmp_path / "X.csv"
    result = _sweep(out, 2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "merged the shards of 2 ranks" in result.stdout
    merged = _read(out)
    assert not merged.duplicated(KEY).any()
    assert _keys(merged) == _keys(expected)
    assert merged["error"].isna().all() and merged["ms"].notna().all()
    assert shard_files(out) == []  # removed once merged
    assert set(merged["world_size"]) == {2} and set(merged["rank"]) == {0, 1}  # both ranks measured
    assert set(merged["device"]) == {"model:H100"}
    # a case's rows (eager, the baseline of its speedups, included) come from one rank
    case = [k for k in KEY if k != "provider"]
    assert (merged.groupby(case)["rank"].nunique() == 1).all()
    assert merged.loc[merged["provider"] == "eager", "speedup"].eq(1.0).all()
    assert merged["speedup"].notna().all()
    # sorted
    ordered = merged.sort_values(ORDER, kind="stable")
    assert merged.index.equals(ordered.index)
    # the same measurements: wherever every program was counted, the model is deterministic
    both = merged.merge(expected, on=KEY, suffixes=("", "_single"))
    exact = (both["counted"] == "every program") & (both["counted_single"] == "every program")
    assert exact.any()
    assert (both.loc[exact, "ms"] - both.loc[exact, "ms_single"]).abs().max() < 1e-12

    # a rerun has nothing to do and leaves the CSV as it was
    text = out.read_text()
    again = _sweep(out, 2)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing new" in again.stdout and "0 of 0 cases to do" in again.stdout
    assert out.read_text() == text and shard_files(out) == []

    # rank 1 dies (SIGKILL) right after its first row: the job fails, that row is on disk in its shard
    out = tmp_path / "Y.csv"
    killed = _sweep(out, 2, **{KILL_HOOK: "1:1"})
    assert killed.returncode != 0, killed.stdout + killed.stderr
    assert not out.exists()  # never merged
    survivor = pd.read_csv(shard_path(out, 1), dtype=str, keep_default_na=False)
    assert len(survivor) == 1
    on_disk = sum(len(pd.read_csv(p)) for p in shard_files(out))  # rank 0's too, as far as it got when stopped
    # the rerun does the rest: every row once, the survivor's as it was written
    rerun = _sweep(out, 2)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming: {on_disk} finished rows" in rerun.stdout
    final = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert not final.duplicated(KEY).any()
    assert _keys(final) == _keys(expected)
    assert (final["error"] == "").all()
    kept = final.merge(survivor, on=list(final.columns))
    assert len(kept) == 1  # the killed rank's row, to the character
    assert shard_files(out) == []


# ------------------------------------------------------------------------------------------------ the pieces


def test_assign_balances_by_cost_deterministically():
    costs = [100.0, 1.0, 1.0, 1.0, 1.0, 50.0, 50.0, 0.0, 2.0]
    shares = assign(costs, 2)
    assert shares == assign(list(costs), 2)  # deterministic
    assert sorted(i for s in shares for i in s) == [i for i, c in enumerate(costs) if c > 0]  # each once
    assert all(s == sorted(s) for s in shares)  # in plan order
    loads = sorted(sum(costs[i] for i in s) for s in shares)
    assert loads == [103.0, 103.0]  # by cost, not by count: the 100 goes with few cheap items
    assert assign([5.0], 3) == [[0], [], []]


def test_expected_cost_grows_with_the_work():
    attention = OPS["attention"]
    items = plan.work_items([attention], gpu=True, modes=["fwd"])
    providers = [p for p in items[0].providers if p != "compile"]
    cost = {(plan.params_of(it.dims), it.dims["seqlen"]): plan.expected_cost(it, providers) for it in items}
    full = [p for p, _ in cost if '"window": null' in p]
    assert full
    for params in {p for p, _ in cost}:
        seqlens = sorted(s for p, s in cost if p == params)
        assert [cost[params, s] for s in seqlens] == sorted(cost[params, s] for s in seqlens)  # grows with seqlen
        if params in full:  # full attention: 16k tokens weigh far more than 512
            assert cost[params, seqlens[-1]] > 4 * cost[params, seqlens[0]]
    item = items[0]
    assert plan.expected_cost(item, ["eager", "ours"]) > plan.expected_cost(item, ["eager"]) > 0


class _Stub:
    """A measurer that measures nothing (the store's mechanics, fast)."""

    device, real_sizes, stand_ins, notice = "stub", False, {}, ""

    def ceilings(self):
        return {"copy_gbps": 1.0, "matmul_tflops": 1.0}

    def measure(self, fn, case, mode, **_):
        return {"ms": 1.0}


def _run(out):
    return runner.run([OPS["layer_norm"]], out, modes=["fwd", "bwd"], measurer=_Stub())


def test_a_rerun_with_another_world_size_skips_and_merges_the_shards(tmp_path, capsys):
    """Shards left by a 4-rank run that died: a one-process rerun counts their rows done, retries their failed
    ones, runs the rest, and merges them into the CSV; a torn last line is ignored."""
    full = _read(_run(tmp_path / "full.csv"))
    assert len(full) >= 6
    out = tmp_path / "X.csv"
    text = pd.read_csv(tmp_path / "full.csv", dtype=str, keep_default_na=False).assign(world_size="4")
    failed = text.iloc[[2]].assign(ms="", error="MemoryError: pretend", rank="3")
    text.iloc[:2].assign(rank="2").to_csv(shard_path(out, 2), index=False)
    pd.concat([failed, text.iloc[3:4].assign(rank="3")]).to_csv(shard_path(out, 3), index=False)
    with open(shard_path(out, 3), "a") as f:
        f.write("layer_norm,ours,fwd,fp32,8,{")  # a row cut off by a kill
    capsys.readouterr()
    _run(out)
    printed = capsys.readouterr().out
    assert "resuming: 3 finished rows" in printed and "1 failed ones are retried" in printed
    assert f"wrote {out} ({len(full) - 3} rows)" in printed  # the failed row and the rest, nothing twice
    merged = _read(out)
    assert not merged.duplicated(KEY).any() and _keys(merged) == _keys(full)
    assert merged["error"].isna().all()
    assert shard_files(out) == []
    assert sorted(merged["rank"].unique()) == [0, 2, 3]


def test_merge_keeps_one_row_per_key(tmp_path):
    out = tmp_path / "m.csv"
    row = {"op": "layer_norm", "provider": "ours", "mode": "fwd", "dtype": "fp32", "seqlen": 8, "params": "{}",
           "device": "stub", "ms": 1.0, "error": "", "timestamp": "2026-01-01T00:00:00+00:00"}
    rows = pd.DataFrame([{**row, "ms": "", "error": "MemoryError"},  # the failed row, in the CSV
                         {**row, "seqlen": 16}], columns=COLUMNS)
    rows.to_csv(out, index=False)
    pd.DataFrame([{**row, "ms": 2.0, "timestamp": "2026-01-02T00:00:00+00:00"}],  # its retry, in a shard
                 columns=COLUMNS).to_csv(shard_path(out, 1), index=False)
    sent = pd.DataFrame([{**row, "seqlen": 16}, {**row, "provider": "eager", "seqlen": 16}],
                        columns=COLUMNS).to_csv(index=False)  # a shard's text from another machine
    assert merge(out, [sent]) == 3
    df = _read(out)
    assert list(df.columns) == COLUMNS
    assert df[["provider", "seqlen", "ms"]].values.tolist() == [["ours", 8, 2.0], ["eager", 16, 1.0],
                                                                 ["ours", 16, 1.0]]
    assert df["error"].isna().all() and shard_files(out) == []


def test_a_csv_of_an_older_version_gets_the_new_columns(tmp_path):
    out = tmp_path / "old.csv"
    full = _read(_run(tmp_path / "full.csv"))
    old = [c for c in COLUMNS if c not in ("rank", "world_size")]
    full.iloc[:3][old].to_csv(out, index=False)
    _run(out)
    df = _read(out)
    assert list(df.columns) == COLUMNS and _keys(df) == _keys(full)
    assert df["rank"].isna().sum() == 3 and (df["rank"].dropna() == 0).all()


def test_merged_rows_plot(tmp_path):
    """Rows of several ranks (the new columns) plot as one line per provider and device."""
    out = tmp_path / "r.csv"
    df = pd.read_csv(_run(tmp_path / "one.csv"), dtype=str, keep_default_na=False)
    df.assign(rank=[str(i % 3) for i in range(len(df))], world_size="3").to_csv(out, index=False)
    plots_main.main([str(out), "--out", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig_layer_norm.png").stat().st_size > 10_000
