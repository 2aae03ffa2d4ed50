"""triton-playground compare: an unchanged tree compares clean (every ratio exactly 1), a kernel whose row loop
loses its pipelining is flagged with a non-zero exit, a config that becomes pickable and spills is flagged, and a
bad ref is one line and exit 2. Hermetic: a clone of this repository in tmp_path, its own cache and worktrees there."""

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from triton_playground import compare

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "triton_playground/kernels/ops/layer_norm/kernel.py"
# the norms' persistent row loops, the forward's first; pipelined where a row fits one tile
PIPELINED = "for tile in tl.range(pid, tl.cdiv(n_rows, BLOCK_M), n_progs, num_stages=2 if SINGLE_TILE else 1):"
# the cheapest counted case: rms_norm's quick-plan shape at 1024 tokens, every mode, no sm_90 report
CHEAP = ["rms_norm", "--max-seqlen", "1024", "--no-report"]


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    repo = tmp_path_factory.mktemp("compare") / "repo"
    git(ROOT, "clone", "-q", str(ROOT), str(repo))
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "clean")
    return repo


def run(clone, capsys, *argv):
    code = compare.main([*argv, "--repo", str(clone), "--cache", str(clone.parent / "cache"),
                         "--out", str(clone.parent / "out")])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_unchanged_tree_compares_clean(clone, capsys):
    code, out = run(clone, capsys, "HEAD", *CHEAP, "--fail-on-regression", "0")  # HEAD vs the working tree
    assert code == 0, out
    assert "no regression over 0%" in out
    df = pd.read_csv(clone.parent / "out" / "sweep_compare.csv")
    assert len(df) == 3 and set(df["mode"]) == {"fwd", "bwd", "fwd+bwd"}
    for c in compare.SWEEP_COLS:
        assert (df[f"{c}_x"] == 1.0).all(), df[[f"{c}_b", f"{c}_h"]]  # counted twice, identical to the byte
    assert (clone.parent / "out" / "compare_ms.png").stat().st_size > 0


def test_a_kernel_whose_loop_loses_its_pipelining_is_a_regression(clone, capsys):
    """The forward's row loop unpipelined: each program then waits on every row tile's loads (the H100 model's
    trip latency), so its modeled time grows though it moves the same bytes."""
    source = (clone / KERNEL).read_text()
    assert source.count(PIPELINED) == 2
    unpipelined = PIPELINED.replace("num_stages=2 if SINGLE_TILE else 1", "num_stages=1")
    (clone / KERNEL).write_text(source.replace(PIPELINED, unpipelined, 1))
    git(clone, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "forward unpipelined")
    code, out = run(clone, capsys, "HEAD~1", "HEAD", *CHEAP, "--fail-on-regression", "1")
    assert code == 1, out
    assert "REGRESSION (> 1%)" in out and "rms_norm fwd bf16 seqlen=1024" in out, out
    assert "base: sweep cached" in out  # the clean commit's counts came from the first test's run


def test_a_pickable_config_that_starts_to_spill_is_a_regression(tmp_path):
    row = dict(provider="ours", op="mlp", shape="s", seqlen="512", dtype="bf16", kernel="k", variant="v",
               config="BM=128", cfg=0, may_pick=False, error="", regs=255, spill_stores=64, spill_loads=64,
               occ_warps=8, hgmma=4, hmma=0, utmaldg=0, ldgsts=2, ldg=0, sass=100)
    pd.DataFrame([row]).to_csv(tmp_path / "base.csv", index=False)  # dropped by the prune rule
    pd.DataFrame([{**row, "may_pick": True}]).to_csv(tmp_path / "head.csv", index=False)  # now pickable
    df = compare.compare_reports(tmp_path / "base.csv", tmp_path / "head.csv")
    assert df["starts_to_spill"].tolist() == [True] and df["changed"].tolist() == [True]
    same = compare.compare_reports(tmp_path / "head.csv", tmp_path / "head.csv")
    assert not same["starts_to_spill"].any() and not same["changed"].any()
    assert (same[["regs_x", "spill_x", "occ_x"]] == 1.0).all().all()


def test_a_bad_ref_is_one_line_and_exit_2(clone, capsys):
    code, out = run(clone, capsys, "no-such-ref", "rms_norm")
    assert code == 2 and out.strip().count("\n") == 0 and "'no-such-ref' is not a commit" in out, out
