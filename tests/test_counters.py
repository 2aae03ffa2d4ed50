"""The counters (``kernels.count()``) and what they lock in: counts that are right on kernels whose work is known
by hand, block skipping in attention, traffic near the least for the memory-bound ops, GEMM tiles read as often
as their tiling implies, and the eager reference counted by the same rules.

Every count here is of kernels running under the interpreter; nothing is timed.
"""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl

from triton_playground import kernels
from triton_playground.kernels import OPS
from triton_playground.kernels import _runtime as rt
from triton_playground.kernels.ops.attention import kernel as attn_kernel
from triton_playground.kernels.ops.attention import kernel_bwd as attn_kernel_bwd
from triton_playground.kernels.ops.attention.spec import visible_pairs
from triton_playground.kernels.perf import model

pytestmark = pytest.mark.skipif(not rt.INTERPRET, reason="the counters run under the Triton interpreter")


# ------------------------------------------------------------------------------------------------ the counters


@triton.jit
def _masked_copy(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs, mask=offs < n), mask=offs < n)


@triton.jit
def _scale_rows(X, W, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * n + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs) * tl.load(W + tl.arange(0, BLOCK)))


@triton.jit
def _sum_rows(X, Y, n_rows, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    """A persistent program summing rows pid, pid + programs, ...; its loop pipelined when STAGES >= 2."""
    offs = tl.arange(0, BLOCK)
    for row in tl.range(tl.program_id(0), n_rows, tl.num_programs(0), num_stages=STAGES):
        tl.store(Y + row, tl.sum(tl.load(X + row * BLOCK + offs), axis=0))


@triton.jit
def _tile_dot(A, B, C, BLOCK: tl.constexpr, PRECISION: tl.constexpr = "tf32"):
    offs = tl.arange(0, BLOCK)
    a = tl.load(A + offs[:, None] * BLOCK + offs[None, :])
    b = tl.load(B + offs[:, None] * BLOCK + offs[None, :])
    tl.store(C + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, b, input_precision=PRECISION))


def test_loads_and_stores_count_only_unmasked_elements():
    x = torch.randn(1000, dtype=torch.float16)
    y = torch.empty_like(x)
    with kernels.count() as c:
        _masked_copy[(triton.cdiv(1000, 256),)](x, y, 1000, BLOCK=256)  # 4 programs, 24 lanes masked off
    assert torch.equal(x, y)
    assert (c.launches, c.programs, c.bytes_read, c.bytes_written, c.flops) == (1, 4, 2000, 2000, 0)
    assert c.by_kernel()["_masked_copy"].launches == 1


def test_a_dot_counts_2mnk_per_call_and_its_input_class():
    a, b = torch.randn(32, 32), torch.randn(32, 32)
    a16, b16 = a.half(), b.half()
    out = torch.empty(32, 32)
    with kernels.count() as c:
        _tile_dot[(3,)](a16, b16, out, BLOCK=32)
        _tile_dot[(1,)](a, b, out, BLOCK=32, PRECISION="ieee")
        _tile_dot[(1,)](a, b, out, BLOCK=32)  # no input_precision: the GPU's default, TF32
        _tile_dot[(1,)](a, b, out, BLOCK=32, PRECISION="tf32x3")
    fp16, ieee, tf32, tf32x3 = c.records
    assert dict(fp16.dot_flops) == {"fp16": 3 * 2 * 32**3}
    assert dict(ieee.dot_flops) == {"fp32-ieee": 2 * 32**3}
    assert dict(tf32.dot_flops) == {"fp32-tf32": 2 * 32**3}
    assert dict(tf32x3.dot_flops) == {"fp32-tf32": 3 * 2 * 32**3}  # three TF32 products per product


def test_fp32_dots_are_rounded_as_a_gpu_rounds_them():
    """The interpreter multiplies fp32 exactly whatever input_precision says; kernels/_runtime.py rounds the
    operands to TF32 as an H100 does, so "tf32" shows its ~1e-3 error and "tf32x3" its ~1e-7."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 32, generator=g), torch.randn(32, 32, generator=g)
    a[0, 0] = float("nan")  # (an infinite operand becomes NaN in "tf32x3", on a GPU too: its remainder is inf - inf)
    ref = a.double() @ b.double()
    error = {}
    for precision in ("ieee", "tf32", "tf32x3"):
        out = torch.full((32, 32), float("nan"))
        _tile_dot[(1,)](a, b, out, BLOCK=32, PRECISION=precision)
        assert torch.equal(out.isnan(), ref.isnan())
        error[precision] = ((out.double() - ref)[1:].norm() / ref[1:].norm()).item()
    assert error["ieee"] < 1e-6 and error["tf32x3"] < 1e-6
    assert 1e-4 < error["tf32"] < 1e-2  # TF32 keeps 10 mantissa bits: 2^-11 a product, averaged down


def test_sampling_scales_uniform_grids_exactly_and_runs_fewer_programs():
    x = torch.randn(64 * 256)
    y = torch.full_like(x, float("nan"))
    with kernels.count(sample=8) as c:
        _masked_copy[(64,)](x, y, x.numel(), BLOCK=256)
    (launch,) = c.records
    assert (launch.programs, launch.programs_run) == (64, 8)
    assert (c.bytes_read, c.bytes_written) == (x.numel() * 4, x.numel() * 4)
    assert torch.isnan(y).sum() == 56 * 256  # the programs not run wrote nothing


def test_aten_ops_are_counted_outside_triton_launches_only():
    x = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(32, 16)
    with kernels.count() as c:
        (x @ w).relu().sum().backward()
    names = [r.kernel for r in c.records]
    assert "mm" in names and "relu" in names and "t" not in names  # views launch nothing
    assert c.flops == 2 * (2 * 64 * 32 * 16)  # the forward's mm and the backward's dx (w needs no gradient)


def test_nested_counters_each_see_everything():
    x = torch.randn(512)
    with kernels.count() as outer:
        with kernels.count() as inner:
            _masked_copy[(2,)](x, torch.empty_like(x), 512, BLOCK=256)
        _masked_copy[(2,)](x, torch.empty_like(x), 512, BLOCK=256)
    assert (inner.launches, outer.launches) == (1, 2)


def test_a_launch_is_modeled_at_its_slowest_roof_plus_its_fixed_cost():
    h100, c = model.H100, model.CONSTANTS
    launch = kernels.perf.Launch("k", programs=100_000, bytes_read=int(h100.hbm_bytes_per_s * 1e-3), num_warps=4)
    launch.dot_flops["bf16"] = int(h100.peak_flops["bf16"] * 2e-3)  # 2 ms of compute against 1 ms of memory
    assert model.device_seconds(launch) == pytest.approx(2e-3 + c.kernel_fixed_s)
    launch.dot_flops["bf16"] = 0  # now memory-bound: each byte once, at HBM's rate
    assert model.device_seconds(launch) == pytest.approx(1e-3 + c.kernel_fixed_s)
    # one program an SM looping over rows without a tl.dot: its own pace, not HBM's, bounds it
    persistent = kernels.perf.Launch("p", programs=132, bytes_read=int(132 * 1e6), num_warps=16)
    persistent.trips = 30
    pace = 1e6 / (16 * c.warp_bytes_per_s) + 30 * c.trip_s
    assert model.device_seconds(persistent) == pytest.approx(max(pace, 132e6 / h100.hbm_bytes_per_s)
                                                             + c.kernel_fixed_s)


def test_a_pipelined_loop_waits_on_no_trip():
    """A loop Triton pipelines (``tl.range(..., num_stages=2)``: sm_90 cp.async, which tests/test_report.py checks
    for the kernels that rely on it) has its trips counted for L2 but none that waits on its loads; the same loop
    unpipelined waits on every trip, and the model charges it ``trip_s`` a trip."""
    x, y = torch.randn(40, 64), torch.empty(40)
    counts = {}
    for stages in (1, 2):
        with kernels.count() as c:
            _sum_rows[(4,)](x, y, 40, BLOCK=64, STAGES=stages)
        assert torch.allclose(y, x.sum(1), atol=1e-5)
        counts[stages] = c.records[0]
    plain, pipelined = counts[1], counts[2]
    assert (plain.trips, plain.waited_trips) == (10, 10)
    assert (pipelined.trips, pipelined.waited_trips) == (10, 1)
    gap = model.program_seconds(plain, model.H100) - model.program_seconds(pipelined, model.H100)
    assert gap == pytest.approx(9 * model.CONSTANTS.trip_s)


def test_rereads_reach_hbm_only_past_what_l2_holds():
    """A weight of 16 KB re-read by 4096 row programs costs HBM its 16 KB once; a 1 GB tensor re-read by programs
    that touch more than L2 holds at once costs HBM its re-reads in proportion."""
    norm = kernels.perf.Launch("norm", programs=4096, bytes_read=4096 * 16384 * 2, num_warps=4)
    norm.extents = [4096 * 16384, 16384]
    norm.requested = {(0, "r"): 4096 * 16384, (1, "r"): 4096 * 16384}
    assert norm.bytes_unique == 4096 * 16384 + 16384
    assert model.dram_bytes(norm, model.H100) == norm.bytes_unique
    big = kernels.perf.Launch("big", programs=132, bytes_read=int(4e9), num_warps=8)
    big.extents, big.requested = [int(1e9)], {(0, "r"): int(4e9)}
    assert big.bytes_unique == int(1e9)
    assert model.dram_bytes(big, model.H100) == pytest.approx(1e9 + 3e9 * (1 - model.H100.l2_bytes / 1e9))


def test_loads_are_attributed_to_the_tensors_they_read():
    """Every load and store of a launch lands on the tensor argument its address falls in: a vector re-read by
    every program is requested once a program, and its extent caps what is unique."""
    x, w = torch.randn(64, 32), torch.randn(32)
    with kernels.count() as c:
        _scale_rows[(64,)](x, w, torch.empty_like(x), 32, BLOCK=32)
    (launch,) = c.records
    assert launch.requested == {(0, "r"): 64 * 32 * 4, (1, "r"): 64 * 32 * 4, (2, "w"): 64 * 32 * 4}
    assert launch.extents == [64 * 32 * 4, 32 * 4, 64 * 32 * 4]
    assert launch.bytes_unique == 2 * 64 * 32 * 4 + 32 * 4


def test_a_call_is_host_bound_when_the_host_is_slower_than_the_device():
    """The timeline: tiny launches hide behind do_bench's L2 flush until the host falls behind, and a sync makes
    the host wait for the device."""
    c, h100 = model.CONSTANTS, model.H100
    tiny = kernels.perf.Launch("tiny", programs=1, bytes_read=4, num_warps=4)
    few = kernels.perf.Counter([tiny])
    assert model.timeline_seconds([few]) == pytest.approx(model.device_seconds(tiny))
    flush = model.FLUSH_BYTES / h100.hbm_bytes_per_s
    n = int(3 * flush / c.host_triton_s)  # three flushes' worth of host time
    many = kernels.perf.Counter([tiny] * n)
    assert model.timeline_seconds([many]) == pytest.approx(n * c.host_triton_s - flush + model.device_seconds(tiny))
    synced = kernels.perf.Counter([tiny], host=[(1, "sync"), (1, "op")])
    assert model.timeline_seconds([synced], flush=False) == pytest.approx(
        c.host_triton_s + model.device_seconds(tiny) + c.sync_s + c.host_op_s)


# ------------------------------------------------------------------------------------------------ block skipping


def _attention_case(n, head_dim, requires_grad):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 1, n, head_dim, generator=g, dtype=torch.float16).requires_grad_(requires_grad)
            for _ in range(3)]


# Dot products of length head_dim per (query, key) pair, each 2 * head_dim FLOPs: the forward computes q.k and
# p.v (2); dK/dV recomputes q.k and forms dv, dp and dk (4), and its share of dq where it adds it (5: no window or
# a long one, then there is no dQ launch); dQ recomputes q.k and forms dp and dq (3).
DOTS_PER_PAIR = {"attn_fwd": 2, "attn_bwd_dkdv": 4, "attn_bwd_dq": 3}


@pytest.mark.parametrize("window", [None, 128, 512, 1024])
@pytest.mark.parametrize("mode", ["fwd", "bwd"])
def test_attention_computes_only_tiles_with_visible_pairs(window, mode, monkeypatch):
    """N = 2048, head dim 64, causal: every kernel's executed pairs (its counted dot FLOPs / FLOPs per pair) are
    at least the visible pairs and at most those plus what tiles at the mask's edges add.

    The bound, per block of R resident rows (queries in the forward and dQ, keys in dK/dV) streaming S-row tiles:
    the rows of a block see a band of keys R - 1 wider than one row sees (at most R * (R - 1) pairs beyond the
    visible ones), and the band's two ends round out to whole S-tiles (at most 2 * R * (S - 1) more). So
    executed <= visible + blocks * R * (R + 2 * S). Without block skipping — computing every tile up to the
    diagonal — the window's cases run 2.3 to 8 times the visible pairs and fail this.
    """
    from triton_playground.kernels.ops.attention import api

    monkeypatch.setattr(api, "DQ_ADD_MIN_KEYS", 0)  # the backward's dq added in dK/dV at this length too
    n, d = 2048, 64
    q, k, v = _attention_case(n, d, requires_grad=mode == "bwd")
    visible = visible_pairs(n, n, causal=True, window=window)
    with kernels.count() as fwd:
        out = kernels.attention(q, k, v, window=window)
    counter = fwd
    if mode == "bwd":
        with kernels.count() as counter:
            out.backward(torch.ones_like(out))
    tuned = {"attn_fwd": attn_kernel.attn_fwd, "attn_bwd_dkdv": attn_kernel_bwd.attn_bwd_dkdv,
             "attn_bwd_dq": attn_kernel_bwd.attn_bwd_dq}
    checked = 0
    for name, sub in counter.by_kernel().items():
        if name not in DOTS_PER_PAIR:
            continue
        config = tuned[name].last_config().kwargs
        resident, streamed = ((config["BLOCK_N"], config["BLOCK_M"]) if name == "attn_bwd_dkdv"
                              else (config["BLOCK_M"], config["BLOCK_N"]))
        dots = DOTS_PER_PAIR[name] + (name == "attn_bwd_dkdv" and "attn_bwd_dq" not in counter.by_kernel())
        executed = sub.flops / (dots * 2 * d)
        bound = visible + math.ceil(n / resident) * resident * (resident + 2 * streamed)
        assert visible <= executed <= bound, (
            f"{name}: {executed:.0f} pairs executed, visible {visible}, tile bound {bound} "
            f"(resident {resident}, streamed {streamed})")
        checked += 1
    if mode == "bwd":  # dq added by dK/dV's programs (DQ_ADD) without a window or with a long one: no dQ launch
        dq_add = window is None or window >= 1024
        assert [r.kernel for r in counter.records if r.source == "triton"] == (
            ["attn_bwd_delta", "attn_bwd_dkdv"] + ([] if dq_add else ["attn_bwd_dq"]))
    assert checked == (1 if mode == "fwd" else 1 + ("attn_bwd_dq" in counter.by_kernel()))


# ------------------------------------------------------------------------------------------------ traffic


MEMORY_BOUND = {  # op -> dims of a real-sized call that spans many programs
    "layer_norm": {"seqlen": 8192, "hidden": 1024},
    "rms_norm": {"seqlen": 4096, "hidden": 4096},
    "partial_rope": {"batch": 1, "heads": 32, "seqlen": 4096, "head_dim": 128, "rotary_fraction": 0.5},
    "topk_routing": {"seqlen": 16384, "experts": 64, "k": 8},
}


@pytest.mark.parametrize("mode", ["fwd", "bwd"])
@pytest.mark.parametrize("name", list(MEMORY_BOUND))
def test_memory_bound_ops_move_near_the_least_bytes(name, mode):
    """Counted with the H100's grid (132 SMs) and 16 programs of a launch run (their work is uniform, so the
    scaling is exact), against the op's least bytes (its spec's bytes_moved):

    * what the H100 model sends to HBM (``bytes_dram``, L2 hits taken out) is at most 1.1 x the least;
    * every tensor of at least 1% of the least is asked for at most 1.1 x its own bytes, each way: read once,
      written once. Only smaller ones may be asked for again (a norm's weight and bias, a few KB, which every
      row tile of its forward reads where its output needs them, from L2)."""
    spec, dims = OPS[name], MEMORY_BOUND[name]
    case = spec.make_case(dims, torch.float16, rt.DEVICE, requires_grad=mode == "bwd")
    with rt.modeled_sms(model.H100.sms):
        with kernels.count(sample=16) as fwd:
            outs = spec.fn(*case.args, **case.kwargs)
        counter = fwd
        if mode == "bwd":
            outs = [o for o in (outs if isinstance(outs, tuple) else (outs,)) if o.requires_grad]
            cotangents = [torch.ones_like(o) for o in outs]
            with kernels.count(sample=16) as counter:
                torch.autograd.grad(outs, case.grad_inputs(), cotangents)
    least = spec.bytes_moved(dims, torch.float16, mode)
    dram = sum(model.dram_bytes(launch, model.H100) for launch in counter.records)
    assert dram <= 1.1 * least, f"{name} {mode}: {dram:.0f} bytes reach HBM, least {least:.0f}\n" + counter.summary()
    reread = [f"{launch.kernel}: tensor {i} ({kind}) asked for {n} bytes of {launch.extents[i]}"
              for launch in counter.records for (i, kind), n in launch.requested.items()
              if launch.extents[i] >= 0.01 * least and n > 1.1 * launch.extents[i]]
    assert not reread, f"{name} {mode}:\n" + "\n".join(reread)
    assert counter.bytes <= 1.1 * least + sum(  # and nothing else: only the small tensors' re-reads are extra
        n for launch in counter.records for (i, _), n in launch.requested.items() if launch.extents[i] < 0.01 * least)


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
def test_mlp_gemms_read_each_operand_tile_as_often_as_the_tiling_implies(tma):
    """A GEMM (M, K) x (K, N) in BLOCK_M x BLOCK_N output tiles: each program reads one (BLOCK_M, K) strip of the
    activations and one (K, BLOCK_N) strip of the weight, and its BLOCK_N slice of the bias. So the weight is read
    once per row of tiles (ceil(M / BLOCK_M) times) and the activations once per column of tiles (ceil(N /
    BLOCK_N) times). The pointer path reads whole strips even at the edges, where it wraps around rather than
    masking; a TMA box is clipped at the tensor's edge, so nothing past it is read."""
    from triton_playground.kernels.ops.mlp import kernel as mlp_kernel

    tile = {"BLOCK_M": 128, "BLOCK_N": 256, "TMA": tma, "PERSISTENT": False}
    index = next(i for i, c in enumerate(mlp_kernel.gemm.configs) if tile.items() <= c.kwargs.items())
    tokens, hidden, inner = 256, 128, 384  # inner: one and a half column tiles of 256
    x = torch.randn(tokens, hidden, dtype=torch.float16)
    w_in, w_out = torch.randn(inner, hidden, dtype=torch.float16), torch.randn(hidden, inner, dtype=torch.float16)
    b_in, b_out = torch.randn(inner, dtype=torch.float16), torch.randn(hidden, dtype=torch.float16)
    with kernels.force_config(mlp_kernel.gemm, index), kernels.count() as c:
        kernels.mlp(x, w_in, b_in, w_out, b_out)
    block_m, block_n = 128, 256
    up, down = c.by_kernel()["gemm"].records
    for launch, (m, k, n) in ((up, (tokens, hidden, inner)), (down, (tokens, inner, hidden))):
        row_tiles, col_tiles = math.ceil(m / block_m), math.ceil(n / block_n)
        strip_n = n if tma else col_tiles * block_n  # the weight columns the column tiles read, edge included
        strip_m = m if tma else row_tiles * block_m
        weight_reads = row_tiles * strip_n * k
        activation_reads = col_tiles * strip_m * k
        bias_reads = row_tiles * n
        assert launch.bytes_read == 2 * (weight_reads + activation_reads + bias_reads), launch
        assert launch.bytes_written == 2 * m * n  # the output, once
        assert launch.flops == 2 * (row_tiles * block_m) * (col_tiles * block_n) * k


# ------------------------------------------------------------------------------------------------ eager


def test_eager_attention_is_counted_with_its_score_matrix():
    """The eager reference materialises the (N, N) scores: its counted bytes are at least a few score matrices,
    ours stay linear in N. Counted on fake tensors, so N = 16384 costs nothing."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    n, d = 16384, 128
    with FakeTensorMode():
        q = torch.randn(1, 1, n, d, dtype=torch.float16)
        with kernels.count() as eager:
            OPS["attention"].reference(q, q, q)
    scores = n * n * 2
    assert eager.bytes >= 4 * scores
    assert eager.flops >= 4 * d * visible_pairs(n, n)
    assert "bmm" in eager.by_kernel() or "matmul" in eager.by_kernel()


def test_sdpa_is_counted_with_the_flops_of_the_gpu_kernel():
    """On the CPU SDPA runs a kernel torch's FLOP formulas do not cover; the counter gives it theirs (full square)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    n, d = 1024, 64
    with FakeTensorMode():
        q = torch.randn(1, 2, n, d, requires_grad=True)
        with kernels.count() as fwd:
            out = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        with kernels.count() as bwd:
            out.sum().backward()
    assert fwd.flops == 2 * 2 * (2 * n * n * d)  # q.k and p.v, per head, full square
    assert bwd.flops == 2.5 * fwd.flops


def test_aten_ops_read_what_they_read_and_layer_norm_backward_is_two_kernels():
    """copy_ overwrites its destination and zeros_like takes its input's shape: neither reads them. CUDA's
    LayerNorm backward is a dX kernel and a dgamma/dbeta kernel, each reading dY and X."""
    x = torch.randn(64, 32, requires_grad=True)
    norm = torch.nn.LayerNorm(32)
    y = norm(x)
    dy = torch.randn_like(y)
    with kernels.count() as c:
        torch.autograd.grad(y, [x, norm.weight, norm.bias], dy)
        dest = torch.empty(64, 32)
        dest.copy_(x.detach())
        torch.zeros_like(dest)
        torch.add(x.detach(), 1, out=dest)
    rows, stats = 64 * 32 * 4, 2 * 64 * 4  # bytes of dY or X; of mean and rstd
    assert [(r.kernel, r.bytes_read, r.bytes_written) for r in c.records] == [
        ("native_layer_norm_backward", 2 * rows + stats + 32 * 4, rows),
        ("native_layer_norm_backward", 2 * rows + stats, 2 * 32 * 4),
        ("copy_", rows, rows), ("zeros_like", 0, rows), ("add", rows, rows)]
