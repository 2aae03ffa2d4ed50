"""The H100 model against published H100 measurements (``triton-playground validate``).

The shipped counts (``validation/data/counts.pkl.gz``) are modeled with the shipped constants, and the held-out
half must meet the bounds; a few programs are counted again here and must give the shipped counts, so the counts
cannot go stale behind the model's back; and the previous model (a roofline of counted bytes, no L2, no host)
fails the same bounds, which shows they can fail.
"""

from __future__ import annotations

import dataclasses

import pytest

from triton_playground.kernels import _runtime as rt
from triton_playground.kernels.perf import model as gpu
from triton_playground.validation import run

pytest.importorskip("liger_kernel")
pytestmark = pytest.mark.skipif(not rt.INTERPRET, reason="counts are taken under the interpreter")

# The bounds on the held-out half, the issue's: geomean x1.25 and worst x2 over the rows measured at >= 20 us,
# host-bound rows within x2, providers ranked right on 90% of pairs.
GEOMEAN, WORST, HOST_BOUND, RANKING = 1.25, 2.0, 2.0, 0.90


@pytest.fixture(scope="module")
def measured():
    return run.rows()


@pytest.fixture(scope="module")
def counts():
    return run.load_counts()


def _held_out(table):
    s = run.summary(table)
    return s[(s["op"] == "all") & (s["half"] == "held-out")].iloc[0]


def test_every_row_that_can_run_has_counts(measured, counts):
    runnable = measured[measured["excluded"] == ""]
    missing = [run.row_key(r)[:4] for _, r in runnable.iterrows() if run.row_key(r) not in counts]
    assert not missing, missing
    assert len(runnable) >= 200 and set(runnable["half"]) == {"fit", "held-out"}


def test_the_halves_are_every_other_size_of_each_sweep(measured):
    for _, sweep in measured.groupby(["kernel_name", "extra_benchmark_config_str"]):
        sizes = sorted(sweep["x_value"].unique())
        halves = dict(zip(sweep["x_value"], sweep["half"]))
        assert [halves[x] for x in sizes] == ["fit" if i % 2 == 0 else "held-out" for i in range(len(sizes))]


def test_the_model_meets_its_bounds_on_the_held_out_half(measured, counts):
    held = _held_out(run.table(measured, counts))
    assert held["rows_ge_20us"] >= 50 and held["host_bound_rows"] >= 5, held.to_dict()
    assert held["geomean_error_ge_20us"] <= GEOMEAN, held.to_dict()
    assert held["worst_error_ge_20us"] <= WORST, held.to_dict()
    assert held["worst_error_host_bound"] <= HOST_BOUND, held.to_dict()
    assert held["ranking_right"] >= RANKING * held["ranking_pairs"], held.to_dict()


def _meets(held) -> bool:
    return (held["geomean_error_ge_20us"] <= GEOMEAN and held["worst_error_ge_20us"] <= WORST
            and held["worst_error_host_bound"] <= HOST_BOUND and held["ranking_right"] >= RANKING * held["ranking_pairs"])


def test_the_bounds_catch_a_model_without_its_mechanisms(measured, counts):
    """The same check fails without the host (every launch free to issue), without L2 (every re-read from HBM),
    and on the model this project had before (a roofline of the counted bytes): it guards each mechanism."""
    no_host = gpu.CONSTANTS.replace(host_triton_s=0.0, host_aten_s=0.0, host_op_s=0.0, sync_s=0.0)
    assert not _meets(_held_out(run.table(measured, counts, no_host)))
    no_l2 = dataclasses.replace(gpu.H100, l2_bytes=1)
    assert not _meets(_held_out(run.table(measured, counts, device=no_l2)))
    before = run.table(measured, counts).assign(ratio=lambda t: t["roofline_ms"] / t["measured_ms"])
    assert not _meets(_held_out(before))


# programs cheap enough to count here (seconds), whose sampled launches run every program of their sample within
# the time budget, so a count does not depend on the machine's speed: (kernel, provider, modes)
RECOUNTED = [("relu_squared", "liger", ("forward", "backward", "full")),
             ("relu_squared", "torch", ("forward", "backward", "full")),
             ("layer_norm", "huggingface", ("forward", "backward", "full")),
             ("fused_add_rms_norm", "huggingface", ("forward", "backward", "full")),
             ("fused_add_rms_norm", "liger_fused_add_rms_norm", ("forward",)),
             ("megatron_rms_norm", "liger", ("forward",))]


@pytest.mark.parametrize("kernel, provider, modes", RECOUNTED, ids=[f"{k}-{p}" for k, p, _ in RECOUNTED])
def test_the_shipped_counts_are_what_counting_gives(kernel, provider, modes, measured, counts):
    rows = measured[(measured["kernel_name"] == kernel) & (measured["kernel_provider"] == provider)
                    & measured["kernel_operation_mode"].isin(modes)]
    smallest = rows[rows["x_value"] == rows["x_value"].min()]
    fresh = run.count([r for _, r in smallest.iterrows()])
    assert len(fresh) == len(modes)
    for key, counter in fresh.items():
        shipped = counts[key]
        assert [r.kernel for r in counter.records] == [r.kernel for r in shipped.records], key
        assert (counter.flops, counter.bytes, counter.bytes_unique) == (
            shipped.flops, shipped.bytes, shipped.bytes_unique), key
        assert counter.host == shipped.host, key
