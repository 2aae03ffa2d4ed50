"""The static sm_90 report (``kernels/report``) and what it demands of the kernels, without a GPU.

* the report's registers / stack / static shared memory are cuobjdump's own (one of our kernels, and a toy kernel
  that must spill, whose spill bytes are also ptxas' own and whose local loads and stores are the SASS's);
* every kernel of a small op gets a row per config, dtype and shape;
* the GEMM-like kernels use Hopper's tensor cores (``HGMMA``) in bf16 on every config whose MMA tile has >= 64
  rows (:data:`GEMMS`, exemptions in :data:`EXEMPT` with their reasons);
* no config the autotuner may pick at the sweep's shapes (after the prune rule) spills registers (ptxas' spill
  stores/loads; a stack frame alone may be libdevice's sin/cos scratch, see kernels/report/__init__.py).

The report runs in a subprocess (it compiles; pytest's process interprets). The two last checks share one run
over every op in the sweep's dtype (bf16): minutes on a cold Triton cache, about one on a warm one. Cases that
fail today are ``xfail(strict=True)`` with their figures, so fixing one turns the suite red until it is unmarked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from triton_playground.kernels import OPS
from triton_playground.kernels import _runtime as rt
from triton_playground.kernels.report.collect import op_kernels

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(rt.GPU, reason="the report compiles for sm_90 here; a GPU's suite runs the kernels")


def _report(out: Path, *args) -> pd.DataFrame:
    # the report's own cache (parsed cubins) starts empty, so the parsers run on every kernel, as on a fresh clone
    proc = subprocess.run([sys.executable, "-m", "triton_playground.kernels.report", *args, "--quiet", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "KERNELS_REPORT_CACHE": str(out.parent / "parsed")})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return pd.read_csv(out, keep_default_na=False, na_values=[""])


def _shared_report(tmp_path_factory, worker_id, name: str, *args) -> pd.DataFrame:
    """One report a test session: under pytest-xdist the first worker to ask builds it (with both cores) while the
    others wait on a lock, then read it, instead of each compiling every kernel again."""
    from filelock import FileLock  # a dependency of torch

    session = tmp_path_factory.getbasetemp()
    out = (session if worker_id == "master" else session.parent) / "report" / name
    out.parent.mkdir(exist_ok=True)
    with FileLock(f"{out}.lock"):
        if not out.exists():
            return _report(out, *args)
    return pd.read_csv(out, keep_default_na=False, na_values=[""])


@pytest.fixture(scope="module")
def routing_report(tmp_path_factory, worker_id):
    return _shared_report(tmp_path_factory, worker_id, "routing.csv", "topk_routing")


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory, worker_id):
    """Every op in bf16 (the sweep's dtype) at the sweep's shapes."""
    return _shared_report(tmp_path_factory, worker_id, "bf16.csv", "all", "--dtype", "bf16")


# ------------------------------------------------------------------------------------------------ the parser


def _cubin(name: str, kernel_hash: str) -> bytes:
    """The cubin Triton cached for the compiled kernel ``name`` of this hash (its metadata JSON names the hash)."""
    from triton import knobs

    for meta in Path(knobs.cache.dir).glob(f"*/{name}.json"):
        if re.search(rf'"hash":\s*"{kernel_hash}"', meta.read_text()):
            return meta.with_suffix(".cubin").read_bytes()
    raise FileNotFoundError(f"{name} {kernel_hash} in {knobs.cache.dir}")


def _res_usage(cubin: Path, name: str) -> tuple[int, ...]:
    """(REG, STACK, SHARED, LOCAL) of ``name`` as ``cuobjdump -res-usage`` prints them, read with a pattern of
    this test's own (not the report's parser)."""
    from triton_playground.kernels.report.sass import tool

    text = subprocess.run([tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    m = re.search(rf"Function {name}:\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    assert m, text
    return tuple(int(g) for g in m.groups())


def _sass_count(cubin: Path, opcode: str) -> int:
    from triton_playground.kernels.report.sass import tool

    text = subprocess.run([tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    return len(re.findall(rf"\b{opcode}(?:\.\w+)*\s", text))


def test_numbers_are_cuobjdumps(routing_report, tmp_path):
    """One of our kernels (routing_bwd, bf16, its default config): registers, stack and static shared memory as
    ``cuobjdump -res-usage`` prints them, and its global loads as ``cuobjdump -sass`` lists them."""
    rows = routing_report[(routing_report.kernel == "routing_bwd") & (routing_report.dtype == "bf16")
                          & routing_report.default]
    assert len(rows) >= 1
    row = rows.iloc[0]
    path = tmp_path / "k.cubin"
    path.write_bytes(_cubin("routing_bwd", row["hash"]))
    assert (row["regs"], row["stack"], row["smem_static"], row["local"]) == _res_usage(path, "routing_bwd")
    assert row["regs"] > 0 and row["ldg"] > 0
    assert (row["ldg"], row["stl"], row["bar"]) == tuple(_sass_count(path, op) for op in ("LDG", "STL", "BAR"))


# A kernel that must spill: one warp holds an 8192-float row (256 values a thread) across a reduction.
_SPILLER = """
import os, sys
os.environ.update({"TRITON_INTERPRET": "0", "KERNELS_COMPILE_ONLY": "1"})
import json, torch, triton, triton.language as tl
from triton_playground.kernels.report import compile_only, sass
compile_only.install(90, force=True)

@triton.jit
def hold_a_row(x_ptr, y_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    x = tl.load(x_ptr + offs)
    tl.store(y_ptr + offs, x * tl.sum(x * x) + tl.max(x))

x = torch.empty(8192)
with sass.catching_ptxas_log() as log:
    kernel = hold_a_row.warmup(x, x, N=8192, grid=(1,), num_warps=1)
kernel.ptxas_log = log.getvalue() or sass.ptxas_log(kernel.asm["ptx"], 90)  # a cache hit ran no ptxas
open(sys.argv[1], "wb").write(kernel.asm["cubin"])
open(sys.argv[2], "w").write(kernel.ptxas_log)
print(json.dumps(sass.analyse([kernel])[0]))
"""


def test_a_spill_is_seen_as_cuobjdump_and_ptxas_see_it(tmp_path):
    """The report's columns for a kernel that spills: cuobjdump's REG / STACK, ptxas' spill bytes (read here with
    a pattern of the test's own) and the STL / LDL instructions of the SASS."""
    cubin, log, script = tmp_path / "k.cubin", tmp_path / "ptxas.log", tmp_path / "spiller.py"
    script.write_text(_SPILLER)  # a file: Triton reads a kernel's source with inspect
    proc = subprocess.run([sys.executable, str(script), str(cubin), str(log)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "KERNELS_REPORT_CACHE": str(tmp_path),
                                                       "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    regs, stack, shared, local = _res_usage(cubin, "hold_a_row")
    assert (row["regs"], row["stack"], row["smem_static"], row["local"]) == (regs, stack, shared, local)
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.read_text())
    assert m, log.read_text()
    assert (row["spill_stores"], row["spill_loads"]) == (int(m.group(1)), int(m.group(2)))
    assert row["spill_stores"] > 0 and stack > 0  # it does spill, and every reader sees it
    assert (row["stl"], row["ldl"]) == (_sass_count(cubin, "STL"), _sass_count(cubin, "LDL"))
    assert row["stl"] > 0 and row["ldl"] > 0


def test_batched_disassembly_gives_each_kernel_its_own_instructions(routing_report):
    """The report disassembles a job's kernels in one nvdisasm run (``sass.sass_counts``: raw .text sections,
    instructions split by address); each row's counts are those of its own cubin disassembled alone."""
    from triton_playground.kernels.report import sass

    rows = routing_report.drop_duplicates("hash").to_dict("records")
    assert len({r["kernel"] for r in rows}) == 2 and len(rows) > 4  # batches that mixed kernels and configs
    for row in rows:
        alone = sass.classify(sass.parse_sass(sass.sass(_cubin(row["kernel"], row["hash"]))))
        assert {k: row[k] for k in alone} == alone, (row["kernel"], row["config"])


def test_rows_for_every_kernel_of_a_small_op(routing_report):
    spec = OPS["topk_routing"]
    shapes = routing_report["shape"].unique()
    assert len(shapes) == len({tuple(sorted((k, v) for k, v in d.items() if k != "seqlen"))
                               for d in spec.sweep_cases(True)})
    for tuned in op_kernels(spec):
        for index in range(len(tuned.configs)):
            for dtype in ("bf16", "fp32"):
                for shape in shapes:
                    rows = routing_report[(routing_report.kernel == tuned.name) & (routing_report.cfg == index)
                                          & (routing_report.dtype == dtype) & (routing_report["shape"] == shape)]
                    assert len(rows) >= 1, (tuned.name, index, dtype, shape)
                    assert (rows.error.isna() & (rows.regs > 0) & (rows.sass > 0)).all(), rows.to_dict("records")
    assert routing_report.default.sum() == 2 * len(shapes) * len(op_kernels(spec))



def test_every_config_compiles_where_the_tuner_may_pick_it_and_once_at_least(sweep_report):
    """What compiles (``collect.compile_rows``): every (op, kernel, config) compiles for sm_90 in bf16 without an
    error and within an H100's shared memory, on one row at least (this is the bf16 half of the compile check:
    ``tests/compile_check.py`` compiles fp32); every row the autotuner may pick has its numbers; the rows without
    (``source`` = not compiled) are configs the prune rule drops there at every sweep length, and there are some
    (the report skips them)."""
    errors = sweep_report[sweep_report.error.notna()]
    assert errors.empty, errors[["op", "shape", "kernel", "variant", "config", "error"]].to_string()
    compiled = sweep_report[sweep_report.sass.notna()]
    # every config of every kernel an op launches at the sweep's shapes (attention's split-KV combine runs only
    # when decoding: test_attention.py::test_split_kv_path_compiles_for_h100 compiles it)
    launched = set(zip(sweep_report.op, sweep_report.kernel))
    wanted = {(name, tuned.name, index) for name, spec in OPS.items() for tuned in op_kernels(spec)
              if (name, tuned.name) in launched for index in range(len(tuned.configs))}
    assert {op for op, _ in launched} == set(OPS)
    missing = wanted - set(zip(compiled.op, compiled.kernel, compiled.cfg))
    assert not missing, f"never compiled: {sorted(missing)}"
    too_big = compiled[compiled.smem > rt.H100_SHARED_MEMORY]
    assert too_big.empty, too_big[["op", "kernel", "config", "smem"]].to_string()
    assert sweep_report[sweep_report.may_pick].sass.notna().all()
    skipped = sweep_report[sweep_report.source == "not compiled"]
    assert len(skipped) > 0 and (~skipped.may_pick).all() and (skipped.pruned == "dropped").all()
    assert skipped.sass.isna().all() and sweep_report[sweep_report.source != "not compiled"].sass.notna().all()


def test_pruned_compiles_the_rest_to_the_same_numbers(sweep_report, tmp_path):
    """``--pruned`` compiles the rows the default run leaves out, and the others come out the same."""
    full = _report(tmp_path / "pruned.csv", "layer_norm", "--dtype", "bf16", "--pruned")
    ours = sweep_report[sweep_report.op == "layer_norm"]
    assert full.sass.notna().all() and (ours.source == "not compiled").any()
    key = ["shape", "kernel", "variant", "cfg"]
    both = ours[ours.sass.notna()].merge(full, on=key, suffixes=("", "_full"))
    assert len(both) == ours.sass.notna().sum() and len(full) == len(ours)
    for column in ["hash", "regs", "spill_stores", "smem", "occ_warps", "hgmma", "ldg", "sass"]:
        assert (both[column] == both[f"{column}_full"]).all(), column


# ------------------------------------------------------------------------------------------------ HGMMA


@dataclasses.dataclass(frozen=True)
class Gemm:
    op: str
    kernel: str
    rows: str  # the block size that is the MMA's M (the rows of the accumulator tile): a config kwarg or constexpr
    why: str


# The GEMM-like kernels: each must issue wgmma (HGMMA) in bf16 on sm_90 whenever its accumulator tile has >= 64
# rows (one warpgroup's wgmma is 64 rows tall; below that Triton falls back to mma.sync, HMMA).
GEMMS = [
    Gemm("attention", "attn_fwd", "BLOCK_M", "S = Q K^T and O += P V on a BLOCK_M-row query tile"),
    Gemm("attention", "attn_bwd_dkdv", "BLOCK_N", "dV += P^T dO, dK += dS^T Q on a BLOCK_N-row key tile"),
    Gemm("attention", "attn_bwd_dq", "BLOCK_M", "dQ += dS K on a BLOCK_M-row query tile"),
    Gemm("mlp", "gemm", "BLOCK_M", "every matmul of the MLP, forward and backward"),
    Gemm("moe", "moe_gate_up", "BLOCK_M", "x @ [gate; up]^T per expert block (BLOCK_M from the dispatch)"),
    Gemm("moe", "moe_down", "BLOCK_M", "h @ down^T per expert block (BLOCK_M from the dispatch)"),
    Gemm("moe", "moe_down_bwd", "BLOCK_M", "dout @ down per expert block, SwiGLU backward epilogue"),
    Gemm("moe", "moe_weight_grad", "BLOCK_N", "dW[e] = L^T R over the expert's rows, a BLOCK_N-row tile of dW"),
]
# Configs exempt from HGMMA, and why: tiles under 64 rows, for problems with few rows.
EXEMPT = {
    ("attn_fwd", "BM=16 BN=128 TMA=1 w4 s2"): "decode: q_len <= 16 (the prune rule keeps it for short queries only)",
    ("attn_fwd", "BM=16 BN=128 TMA=0 w4 s2"): "decode: q_len <= 16 (the prune rule keeps it for short queries only)",
    ("attn_fwd", "BM=16 BN=64 TMA=1 w4 s2"): "decode at head dim 256",
    ("attn_fwd", "BM=16 BN=64 TMA=0 w4 s2"): "decode at head dim 256",
    ("gemm", "BM=32 BN=64 BK=32 GROUP_M=8 EPI_N=64 TMA=0 PERSISTENT=0 w4 s4"): "a few tokens (decode): 32-row tiles",
    ("gemm", "BM=32 BN=64 BK=32 GROUP_M=8 EPI_N=64 TMA=1 PERSISTENT=0 w4 s4"): "a few tokens (decode): 32-row tiles",
}
XFAIL_HGMMA: dict[tuple[str, int], str] = {}


def _tile_rows(gemm: Gemm, row) -> int:
    m = re.search(rf"(?:^|\s)(?:{gemm.rows}|B{gemm.rows.removeprefix('BLOCK_')})=(\d+)",
                  f"{row['variant']} {row['config']}")
    return int(m.group(1))


def _gemm_params():
    params = []
    for g in GEMMS:
        tuned = next(t for t in op_kernels(OPS[g.op]) if t.name == g.kernel)
        for index in range(len(tuned.configs)):
            reason = XFAIL_HGMMA.get((g.kernel, index))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(g, index, marks=marks, id=f"{g.kernel}-{index}"))
    return params


def test_exemptions_are_short_tiles(sweep_report):
    """An exempt config must really be a tile under 64 rows (the list cannot hide a full-size one)."""
    for (kernel, config), why in EXEMPT.items():
        gemm = next(g for g in GEMMS if g.kernel == kernel)
        rows = sweep_report[(sweep_report.kernel == kernel) & (sweep_report.config == config)]
        assert len(rows), (kernel, config, "not in the report")
        assert all(_tile_rows(gemm, r) < 64 for r in rows.to_dict("records")), (kernel, config, why)


@pytest.mark.parametrize("gemm, index", _gemm_params())
def test_gemms_use_hgmma(sweep_report, gemm, index):
    rows = sweep_report[(sweep_report.op == gemm.op) & (sweep_report.kernel == gemm.kernel)
                        & (sweep_report.cfg == index) & sweep_report.may_pick]
    rows = [r for r in rows.to_dict("records") if (gemm.kernel, r["config"]) not in EXEMPT]
    bad = [f"{r['shape']} [{r['variant']}] {r['config']}: HGMMA {r['hgmma']}, HMMA {r['hmma']}"
           for r in rows if _tile_rows(gemm, r) >= 64 and not r["hgmma"] > 0]
    assert not bad, f"{gemm.kernel} ({gemm.why}) without wgmma:\n" + "\n".join(bad)


# ------------------------------------------------------------------------------------------------ spills

XFAIL_SPILLS: dict[tuple[str, int], str] = {}


def _spill_params():
    params, seen = [], set()
    for name, spec in OPS.items():
        for tuned in op_kernels(spec):
            if (tuned.name, tuned.fn.__module__) in seen:
                continue  # ops that share kernels (layer_norm and rms_norm; attention and attention_varlen): one
            seen.add((tuned.name, tuned.fn.__module__))  # test each, over every op's rows
            for index in range(len(tuned.configs)):
                reason = XFAIL_SPILLS.get((tuned.name, index))
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                params.append(pytest.param(tuned.name, index, marks=marks, id=f"{tuned.name}-{index}"))
    return params


@pytest.mark.parametrize("kernel, index", _spill_params())
def test_no_spills_where_the_tuner_may_pick(sweep_report, kernel, index):
    rows = sweep_report[(sweep_report.kernel == kernel) & (sweep_report.cfg == index) & sweep_report.may_pick]
    errors = rows[rows.error.notna()]
    assert errors.empty, errors[["op", "shape", "variant", "config", "error"]].to_string()
    spills = rows[(rows.spill_stores > 0) | (rows.spill_loads > 0)]
    assert spills.empty, "spills:\n" + spills[["op", "shape", "variant", "config", "regs", "spill_stores",
                                               "spill_loads", "stack"]].to_string()


# ------------------------------------------------------------------------------------------------ the norms


@pytest.fixture(scope="module")
def norms_report(tmp_path_factory, worker_id, sweep_report):
    """LayerNorm and RMSNorm in bf16 (the sweep's dtype) at the sweep's widths, beside Liger-Kernel's kernels. After
    the sweep report, whose compiles of our kernels it then finds in Triton's cache: it compiles Liger's alone."""
    return _shared_report(tmp_path_factory, worker_id, "norms.csv", "layer_norm", "rms_norm", "--peers",
                          "--dtype", "bf16")


def test_norm_loops_the_model_takes_for_pipelined_compile_to_cp_async(norms_report):
    """The H100 model counts no wait on the loads of a ``tl.range(..., num_stages=2)`` loop (kernels/perf/
    attribution.py), as Triton pipelines them: every config of the norms' one-tile kernels the tuner may pick must
    then compile to cp.async (LDGSTS), or the model would credit a pipeline that is not there."""
    ours = norms_report[(norms_report.provider == "ours") & norms_report.may_pick
                        & norms_report.variant.str.contains("SINGLE_TILE")]
    assert set(ours.kernel) == {"norm_fwd", "norm_bwd"}
    unpipelined = ours[~(ours.ldgsts > 0)]
    assert unpipelined.empty, unpipelined[["op", "dtype", "shape", "kernel", "config", "ldgsts", "smem"]].to_string()


def test_norm_forwards_hold_as_many_warps_an_sm_as_ligers(norms_report):
    """At every width, every forward config the tuner may pick keeps as many warps resident an SM (the report's
    occupancy, from registers, shared memory and warps) as Liger's one-row forward kernel."""
    fwd = norms_report[norms_report.kernel.str.contains("forward|norm_fwd") & norms_report.may_pick].copy()
    liger = fwd[fwd.provider == "liger"].groupby(["op", "dtype", "shape"]).occ_warps.min()
    ours = fwd[fwd.provider == "ours"].groupby(["op", "dtype", "shape"]).occ_warps.min()
    assert len(liger) == 6 and set(ours.index) == set(liger.index)
    below = (ours < liger)[lambda s: s]
    assert below.empty, pd.DataFrame({"ours (least)": ours, "liger": liger}).loc[below.index].to_string()
