"""Whether a peer computes our op: its output, and for a backward mode its input gradients, against the op's
float64 reference, judged by the op's own tolerances (``OpSpec.tolerance`` / ``grad_tolerance``).

A peer that disagrees gets an error row saying by how much, never a speed. The check runs once per (op, peer,
panel, dtype, with or without the backward) on the op's small case (``spec.sweep_cases(False)``, the
interpreter's sizes) closest to the swept panel: the same values where they match (the rotary fraction, the
activation), the same kind where they cannot (a sliding window of 16 tokens standing for one of 256). The real
sizes cannot be checked here: the counters sample the programs of a big launch, so its output is partial, and a
float64 reference of attention at 16k tokens does not fit. bf16 (a GPU's) is checked in fp16, whose tolerance
the specs state (bf16 is judged elsewhere against the reference's own bf16 error, tests/checks.py).
"""

from __future__ import annotations

import numpy as np
import torch

from triton_playground.kernels.spec import Case, OpSpec

CHECK_SEED = 7  # the cotangents' seed: fixed, so a verdict does not change from run to run


def check_dims(spec: OpSpec, dims: dict) -> dict:
    """The small case of ``spec`` closest to ``dims``: the most dims equal, then the most of the same kind (both
    set or both unset, e.g. a window), then the shortest."""

    def score(small):
        same = sum(small.get(k) == v for k, v in dims.items() if k != "seqlen")
        kind = sum(bool(small.get(k)) == bool(v) for k, v in dims.items() if k != "seqlen")
        return (same + kind, -small["seqlen"])

    return max(spec.sweep_cases(False), key=score)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (the tests' measure, tests/checks.py): a floor of 1e-2 RMS on the
    denominator, inf where out is not finite."""
    out, ref = out.detach().double(), ref.detach().double().to(out.device)
    if out.shape != ref.shape:
        raise ValueError(f"output shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        return float("inf")
    floor = 1e-2 * max(out.numel(), 1) ** 0.5
    return ((out - ref).norm() / max(ref.norm().item(), floor)).item()


def _float64(case: Case) -> Case:
    def cast(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.detach().double().requires_grad_(a.requires_grad)
        return a

    return Case(tuple(cast(a) for a in case.args), {k: cast(v) for k, v in case.kwargs.items()})


def _outputs(fn, case: Case) -> list[torch.Tensor]:
    outs = fn(*case.args, **case.kwargs)
    return [o for o in (outs if isinstance(outs, (tuple, list)) else (outs,)) if isinstance(o, torch.Tensor)]


def disagreement(spec: OpSpec, fn, dims: dict, dtype: torch.dtype, backward: bool, device) -> str | None:
    """None when ``fn`` agrees with the reference on the small case closest to ``dims`` in ``dtype`` (fp16 for
    bf16); otherwise what differs and by how much. A :class:`kernels.spec.NotComparable` from ``fn`` passes."""
    # The interpreter computes with numpy, which warns where a GPU's IEEE arithmetic gives inf quietly (FLA's
    # attention takes log2 of a fully masked row's zero sum, by design): the outputs are compared below, and decide.
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return _disagreement(spec, fn, dims, dtype, backward, device)


def _disagreement(spec: OpSpec, fn, dims: dict, dtype: torch.dtype, backward: bool, device) -> str | None:
    dtype = torch.float16 if dtype == torch.bfloat16 else dtype
    small = check_dims(spec, dims)
    case = spec.make_case(small, dtype, device, requires_grad=backward)
    ref_case = _float64(case)
    outs, refs = _outputs(fn, case), _outputs(spec.reference, ref_case)
    where = f"on {small} in {str(dtype).removeprefix('torch.')}"
    tol = spec.tolerance[dtype]
    for i, (out, ref) in enumerate(zip(outs, refs)):
        err = relative_error(out, ref)
        if not err <= tol:
            return f"disagrees with the reference: output {i} off by {err:.2e} (relative; tolerance {tol:.0e}) {where}"
    if not backward:
        return None
    g = torch.Generator(device="cpu").manual_seed(CHECK_SEED)
    pairs = [(o, r) for o, r in zip(outs, refs) if o.requires_grad and r.requires_grad]
    cotangents = [torch.randn(r.shape, generator=g, dtype=torch.float64).to(r.device) for _, r in pairs]
    grads = torch.autograd.grad([o for o, _ in pairs], case.grad_inputs(), [c.to(o.dtype) for (o, _), c in
                                                                              zip(pairs, cotangents)],
                                allow_unused=True)
    ref_grads = torch.autograd.grad([r for _, r in pairs], ref_case.grad_inputs(), cotangents, allow_unused=True)
    tol = spec.grad_tolerance[dtype]
    for i, (grad, ref) in enumerate(zip(grads, ref_grads)):
        if grad is None or ref is None:
            if grad is None and ref is None:
                continue
            missing = "the peer" if grad is None else "the reference"
            return f"disagrees with the reference: no gradient of input {i} from {missing} {where}"
        err = relative_error(grad, ref)
        if not err <= tol:
            return (f"disagrees with the reference: gradient of input {i} off by {err:.2e} (relative; tolerance "
                    f"{tol:.0e}) {where}")
    return None
