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
