"""The Triton peers (each op folder's peers.py: Liger-Kernel, flash-linear-attention) compute our ops under the
interpreter, the sweep refuses a speed to a peer that disagrees, lists a missing or non-covering peer once, and
the summary sets ours against each peer."""

import dataclasses
import re
import sys

import pandas as pd

import pytest
import torch

from triton_playground.kernels import OPS
from triton_playground.kernels.ops.layer_norm import peers as norm_peers
from triton_playground.kernels.spec import NotComparable
from triton_playground.plots.summary import versus
from triton_playground.sweeps import runner
from triton_playground.sweeps.agreement import check_dims, disagreement, relative_error
from triton_playground.sweeps.timing import Timer

TIMER = Timer(counts=False)

# (op, provider, the package it needs): every Triton peer of the six ops
PEERS = [("layer_norm", "liger", "liger_kernel"), ("rms_norm", "liger", "liger_kernel"),
         ("partial_rope", "liger", "liger_kernel"), ("mlp", "liger", "liger_kernel"), ("moe", "liger", "liger_kernel"),
         ("attention", "fla", "fla")]


def _small(op, **over):
    return {**OPS[op].sweep_cases(False)[0], **over}


# Peers whose tl.dot on fp32 inputs keeps Triton's default input_precision, TF32 (a GPU rounds the operands to 10
# mantissa bits; kernels/_runtime.py rounds them so on the CPU too): in fp32 they miss fp32's tolerance by TF32's
# error, on a GPU as here, and the sweep's fp32 rows would say so. In fp16 they agree.
TF32_IN_FP32 = {("attention", "fla"), ("moe", "liger")}


@pytest.mark.parametrize("op,provider,package", PEERS, ids=[f"{o}-{p}" for o, p, _ in PEERS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_peer_agrees_with_the_reference(op, provider, package, dtype):
    pytest.importorskip(package)
    spec = OPS[op]
    fn = spec.peers[provider]()
    assert fn is not None, f"{package} is installed, yet the {op} peer says it is unavailable"
    # output and every input gradient, against the float64 reference, within the op's own tolerances
    verdict = disagreement(spec, fn, _small(op), dtype, True, "cpu")
    if dtype == torch.float32 and (op, provider) in TF32_IN_FP32:
        m = re.search(r"off by ([0-9.e+-]+)", verdict or "")
        assert m and 1e-4 < float(m.group(1)) < 1e-2, verdict  # TF32's error: more than fp32's, far below a bug's
    else:
        assert verdict is None


@pytest.mark.parametrize("dims", [{"rotary_fraction": 0.5}, {"rotary_fraction": 1.0}], ids=["half", "full"])
def test_liger_rope_rotates_the_leading_channels_only(dims):
    pytest.importorskip("liger_kernel")
    spec = OPS["partial_rope"]
    case = spec.make_case(_small("partial_rope", **dims), torch.float32, "cpu")
    out = spec.peers["liger"]()(*case.args, **case.kwargs)
    rotary = case.kwargs["rotary_dim"]
    assert torch.equal(out[..., rotary:], case.args[0][..., rotary:])  # the pass-through channels, untouched
    assert relative_error(out, spec.reference(*case.args, **case.kwargs)) < 1e-5


def test_fla_attention_with_a_window_agrees():
    pytest.importorskip("fla")
    spec = OPS["attention"]
    dims = check_dims(spec, {**_small("attention"), "window": 256})
    assert dims["window"]  # the check case of a windowed panel has a window too
    assert disagreement(spec, spec.peers["fla"](), dims, torch.float16, True, "cpu") is None  # fp32: TF32 (above)


def test_fla_refuses_what_it_does_not_cover():
    pytest.importorskip("fla")
    spec = OPS["attention"]
    case = spec.make_case(_small("attention"), torch.float32, "cpu")
    with pytest.raises(NotComparable, match="causal only"):
        spec.peers["fla"]()(*case.args, causal=False)


def test_a_disagreeing_peer_is_caught():
    spec = OPS["rms_norm"]

    def off_by_a_little(x, weight=None, eps=1e-6):
        return spec.reference(x, weight, eps) * 1.01  # 1% off: far past fp32's 1e-5

    verdict = disagreement(spec, off_by_a_little, _small("rms_norm"), torch.float32, False, "cpu")
    assert verdict is not None and "off by 1.00e-02" in verdict


def test_a_missing_peer_is_unavailable(monkeypatch):
    # an import that fails, as it does where liger-kernel is not installed
    monkeypatch.setitem(sys.modules, "liger_kernel.ops.layer_norm", None)
    assert norm_peers.liger_layer_norm() is None


def test_sweep_rows_of_peers(tmp_path, monkeypatch, capsys):
    """Missing: listed once, no row. Disagreeing: an error row saying by how much, no ms. Not covering a case: no
    row, listed once. Agreeing: a row with its measurement."""
    base = OPS["rms_norm"]
    monkeypatch.setitem(sys.modules, "liger_kernel.ops.rms_norm", None)

    def wrong():
        return lambda x, weight=None, eps=1e-6: base.reference(x, weight, eps) + 0.1

    def partial():
        def fn(x, weight=None, eps=1e-6):
            if x.shape[0] > 8:
                raise NotComparable("only 8 rows")
            return base.reference(x, weight, eps)
        return fn

    spec = dataclasses.replace(base, peers={"liger": base.peers["liger"], "wrong": wrong, "partial": partial})
    out = runner.run([spec], tmp_path / "p.csv", modes=["fwd"], measurer=TIMER)
    printed = capsys.readouterr().out
    df = pd.read_csv(out)
    assert "not available here, skipped: rms_norm/liger" in printed
    assert "liger" not in set(df["provider"])
    bad = df[df["provider"] == "wrong"]
    assert len(bad) == 3 and bad["ms"].isna().all()
    assert bad["error"].str.contains("disagrees with the reference: output 0 off by").all()
    part = df[df["provider"] == "partial"]
    assert sorted(part["seqlen"]) == [8] and part["error"].isna().all() and part["ms"].notna().all()
    assert "rms_norm/partial (2 rows: only 8 rows)" in printed


def test_versus_table():
    row = dict(op="mlp", mode="fwd", dtype="bf16", device="model:H100", error="")
    rows = [
        dict(row, provider="ours", params="{}", seqlen=512, ms=1.0, flops_exec=10, bytes_exec=30, flops_useful=5),
        dict(row, provider="liger", params="{}", seqlen=512, ms=3.0, flops_exec=20, bytes_exec=60, flops_useful=5),
        dict(row, provider="ours", params="{}", seqlen=1024, ms=2.0, flops_exec=40, bytes_exec=50, flops_useful=9,
             bytes_dram=45),
        dict(row, provider="liger", params="{}", seqlen=1024, ms=5.0, flops_exec=50, bytes_exec=200,
             flops_useful=9, bytes_dram=150),
        dict(row, provider="liger", params="{}", seqlen=2048, ms=None, error="disagrees with the reference"),
        dict(row, provider="eager", params="{}", seqlen=1024, ms=9.0),
    ]
    table = versus(pd.DataFrame(rows)).set_index("peer")
    assert list(table.index) == ["liger"]  # eager has its own column (speedup); ours is not its own peer
    liger = table.loc["liger"]
    assert liger["headline"].startswith("seqlen=1024")  # the longest both ran (2048: the peer's error)
    assert liger["speedup_vs_peer"] == pytest.approx(2.5)
    assert liger["flops_exec ours/peer"] == pytest.approx(0.8)
    assert liger["bytes_exec ours/peer"] == pytest.approx(0.25)
    assert liger["bytes_dram ours/peer"] == pytest.approx(0.3)
    assert liger["peer_errors"] == 1
