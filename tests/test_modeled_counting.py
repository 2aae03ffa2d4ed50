"""The modeled sweep's shortcuts count exactly what the plain way counts (sweeps/modeled.py, kernels/perf/shadow.py):
data-dependent PyTorch code on fake tensors with its routing computed for real; a steering kernel sampled with its
outputs written by PyTorch; torch GEMMs beside Triton kernels left uncomputed. Each is compared with the count it
replaces, at the interpreter's sizes, and the quick plan is checked to cover every op."""

from __future__ import annotations

import pytest
import torch

from triton_playground.kernels import OPS
from triton_playground.kernels import _runtime as rt
from triton_playground.sweeps import modeled, plan

pytestmark = pytest.mark.skipif(not rt.INTERPRET, reason="counts are taken under the interpreter")


def _signature(phases) -> list:
    return [(name, [(r.kernel, r.programs, r.flops, r.bytes_read, r.bytes_written) for r in c.records], c.host)
            for name, c in phases.items()]


def _case(op, dims):
    return OPS[op].make_case(dims, torch.float32, rt.DEVICE, requires_grad=True)


def test_data_dependent_references_count_on_fake_tensors_as_on_real_ones():
    """The eager MoE's loop over the experts hit runs on fake tensors, its routing computed for real: the same
    launches, FLOPs, bytes and syncs as running it all for real."""
    dims = {"seqlen": 24, "hidden": 32, "inner": 16, "experts": 8, "k": 2, "hot": 0}
    spec = OPS["moe"]
    shadowed = modeled.count_phases(spec.reference, _case("moe", dims), True, None, ())
    real = modeled._count_phases(spec.reference, _case("moe", dims), True, None, (), None)
    assert sum(r.kernel == "nonzero" for r in shadowed["fwd"].records) == 1 + dims["experts"]  # hit, then each
    for phase in ("fwd", "bwd"):
        a, b = shadowed[phase], real[phase]
        assert sum(r.kernel == "nonzero" for r in a.records) == sum(r.kernel == "nonzero" for r in b.records)
        # the experts' GEMMs, in the order and sizes the real routing gives
        gemms = [[(r.kernel, r.flops, r.bytes_read) for r in c.records if r.flops] for c in (a, b)]
        assert gemms[0] == gemms[1] and len(gemms[0]) >= dims["experts"]
        # one_hot is the only op that differs: on real CPU tensors it checks its range (aminmax, a sync) and
        # scatters; on fake ones it decomposes (arange, eq), as CUDA's skips the check
        one_hot = {"arange", "eq", "_to_copy", "aminmax", "zeros", "scatter_"}
        rest = [[(r.kernel, r.flops, r.bytes_read, r.bytes_written) for r in c.records if r.kernel not in one_hot]
                for c in (a, b)]
        assert rest[0] == rest[1]


def test_a_sampled_router_with_its_outputs_written_counts_as_the_whole_grid():
    """Our MoE router sampled, its top-k then written by the reference: the later launches see the same routing,
    so every launch counts as with the router run whole."""
    dims = {"seqlen": 320, "hidden": 32, "inner": 16, "experts": 8, "k": 2, "hot": 0}  # 5 full router blocks
    spec = OPS["moe"]
    sampled = modeled.count_phases(spec.fn, _case("moe", dims), True, 1, spec.count_exact, None,
                                   outputs=spec.count_outputs)
    whole = modeled.count_phases(spec.fn, _case("moe", dims), True, 1, (*spec.count_exact, "moe_router"), None)
    router = [r for r in sampled["fwd"].records if r.kernel == "moe_router"]
    assert router and router[0].programs_run < router[0].programs  # it was sampled
    assert _signature(sampled) == _signature(whole)


def test_torch_gemms_beside_triton_kernels_are_counted_not_computed(monkeypatch):
    """Liger's MLP (torch linears around a Triton activation) counts the same with its GEMMs left uncomputed."""
    pytest.importorskip("liger_kernel")
    spec = OPS["mlp"]
    monkeypatch.setattr(modeled._Uncomputed, "LEAST_FLOPS", 0)  # every product left uncomputed, at this size
    dims = spec.sweep_cases(False)[0]
    fn = spec.peers["liger"]()
    skipped = modeled.count_phases(fn, _case("mlp", dims), True, None, (), values_steer_work=False)
    computed = modeled.count_phases(fn, _case("mlp", dims), True, None, (), values_steer_work=True)
    assert _signature(skipped) == _signature(computed)


def test_the_quick_plan_covers_every_op_at_a_few_lengths_up_to_the_real_sizes():
    for name, spec in plan.all_specs().items():
        if name.startswith("model_"):
            continue
        quick = plan.sweep_cases(spec, gpu=True, full=False)
        full = plan.sweep_cases(spec, gpu=True)
        assert quick and all(d in full for d in quick), name
        for panel in {plan.params_of(d) for d in quick}:
            lengths = sorted(d["seqlen"] for d in quick if plan.params_of(d) == panel)
            longest = max(d["seqlen"] for d in full if plan.params_of(d) == panel)
            assert 2 <= len(lengths) <= 4 and lengths[-1] == min(longest, plan.QUICK_SEQLENS[-1]), (name, lengths)


# Each op's main panel of the quick plan, shrunk (fewer heads, narrower rows) until counting every program takes
# seconds, with the structure that makes programs' work differ kept: causal and windowed attention's query and key
# blocks, packed documents, the MoE's expert segments with OLMoE's routing (top-8 of 64), GEMM tiles, rows.
SAMPLED = [
    ("attention", {"batch": 1, "q_heads": 2, "kv_heads": 2, "seqlen": 1024, "head_dim": 32, "window": None}),
    ("attention", {"batch": 1, "q_heads": 2, "kv_heads": 1, "seqlen": 1024, "head_dim": 32, "window": 256}),
    ("attention_varlen", {"docs": 4, "q_heads": 2, "kv_heads": 2, "seqlen": 1024, "head_dim": 64, "window": None}),
    ("moe", {"hidden": 32, "inner": 32, "experts": 64, "k": 8, "seqlen": 256, "hot": 0}),
    ("mlp", {"seqlen": 512, "hidden": 256, "inner": 1024, "activation": "relu2"}),
    ("layer_norm", {"seqlen": 1024, "hidden": 128}),
    ("rms_norm", {"seqlen": 1024, "hidden": 128}),
    ("partial_rope", {"batch": 1, "heads": 4, "seqlen": 512, "head_dim": 64, "rotary_fraction": 0.5}),
    ("topk_routing", {"seqlen": 4096, "experts": 64, "k": 8}),
]


@pytest.mark.parametrize("op, dims", [pytest.param(op, dims, id=f"{op}-{i}") for i, (op, dims) in enumerate(SAMPLED)])
def test_sampled_counts_are_within_2_percent_of_every_program_counted(op, dims):
    """What the default sweep reports of a sampled launch — FLOPs, bytes read and written, the H100 model's DRAM
    bytes and time — is within 2% of counting every program, for every provider, forward and backward. Sampled as
    the sweep samples (``modeled.DEFAULT_SAMPLE`` programs a launch) but without its time budget (which stops a
    launch after a whole pair: the sample's balance holds), so the test is deterministic."""
    from triton_playground.kernels.perf import model as gpu

    spec = plan.all_specs()[op]
    case = spec.make_case(dims, torch.float16, rt.DEVICE, requires_grad="bwd" in spec.modes)
    sampled_somewhere = False
    for provider, factory in plan.providers(spec, None).items():
        fn = None if provider == "compile" else factory()
        if fn is None:
            continue
        counted = [modeled.count_phases(fn, case, "bwd" in spec.modes, modeled.DEFAULT_SAMPLE, spec.count_exact,
                                        None, dtype=torch.bfloat16, outputs=spec.count_outputs,
                                        values_steer_work=spec.values_steer_work, strata=spec.count_strata)]
        if not any(r.programs_run < r.programs for c in counted[0].values() for r in c.records):
            continue  # nothing sampled (PyTorch code, small grids): the count is every program's already
        counted.append(modeled.count_phases(factory(), case, "bwd" in spec.modes, None, spec.count_exact, None,
                                            dtype=torch.bfloat16, outputs=spec.count_outputs,
                                            values_steer_work=spec.values_steer_work, strata=spec.count_strata))
        for phase in counted[1]:
            sampled, exact = counted[0][phase], counted[1][phase]
            sampled_somewhere |= any(r.programs_run < r.programs for r in sampled.records)
            assert [(r.kernel, r.programs) for r in sampled.records] == [(r.kernel, r.programs) for r in exact.records]
            columns = {
                "flops": (sampled.flops, exact.flops),
                "bytes_read": (sampled.bytes_read, exact.bytes_read),
                "bytes_written": (sampled.bytes_written, exact.bytes_written),
                "bytes_dram": tuple(sum(gpu.dram_bytes(r, gpu.H100) for r in c.records) for c in (sampled, exact)),
                "ms": (gpu.modeled_ms([sampled], gpu.H100), gpu.modeled_ms([exact], gpu.H100)),
            }
            for column, (a, b) in columns.items():
                assert a == pytest.approx(b, rel=0.02), f"{provider} {phase} {column}: sampled {a}, exact {b}"
    assert sampled_somewhere  # the case is big enough to be sampled


@pytest.mark.parametrize("dims", [SAMPLED[0][1], SAMPLED[1][1]], ids=["causal", "window"])
def test_one_pair_a_stratum_counts_attention(dims):
    """The sweep's time budget may stop a slow launch after one pair a stratum (attention at 16k tokens): that
    alone must count attention exactly, ours and FLA's, forward and backward. Causal: a query block's walk grows by
    one key block a block (a key block's shrinks), so a program and its mirror sum to twice the mean. Windowed: the
    walks ramp up over the first window and then stay flat; the ramp and the plateau are strata, the ramp in order
    of its walks, and one pair of each is exact."""
    spec = OPS["attention"]
    case = spec.make_case(dims, torch.float16, rt.DEVICE, requires_grad=True)
    providers = {"ours": spec.fn, **({"fla": plan.all_specs()["attention"].peers["fla"]()} if dims["window"] else {})}
    for provider, fn in providers.items():
        if fn is None:
            continue
        pair, exact = (modeled.count_phases(fn, case, True, sample, (), None, strata=spec.count_strata)
                       for sample in (2, None))
        for phase in ("fwd", "bwd"):
            assert any(r.programs_run < r.programs for r in pair[phase].records)
            assert pair[phase].flops == pytest.approx(exact[phase].flops, rel=0.02), (provider, phase)
            assert pair[phase].bytes_read == pytest.approx(exact[phase].bytes_read, rel=0.02), (provider, phase)
