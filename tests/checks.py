"""How an op's result is judged against its reference. Shared by the generated op tests and the GPU check."""

from __future__ import annotations

import torch

from triton_playground.kernels.spec import Case, OpSpec
from triton_playground.sweeps.agreement import relative_error


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere in out gives inf (``sweeps.agreement.relative_error``, the
    one measure the tests and the sweep's peer check share).

    The denominator has a floor of 1e-2 per element (RMS; inputs are O(1)), so a reference that is legitimately
    zero up to rounding (the input gradient of a LayerNorm over 1 or 2 elements, say) is judged by absolute
    error instead of dividing rounding noise by zero. A shape mismatch raises.
    """
    return relative_error(out, ref)


def as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def cast_strided(a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``a`` in ``dtype`` with ``a``'s exact strides (``Tensor.to`` makes a view with gaps contiguous, so the
    kernels would never see it); the gaps of the new storage hold NaN, so a kernel that reads them fails."""
    if a.numel() == 0:
        return a.detach().to(dtype)
    span = 1 + sum((size - 1) * stride for size, stride in zip(a.shape, a.stride()))
    out = torch.full((span,), float("nan"), dtype=dtype, device=a.device).as_strided(a.shape, a.stride())
    return out.copy_(a.detach())


def cast_case(case: Case, dtype: torch.dtype) -> Case:
    """The same inputs, float tensors cast to ``dtype`` with their strides kept (leaves that require grad stay
    leaves)."""

    def cast(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return cast_strided(a, dtype).requires_grad_(a.requires_grad)
        return a

    return Case(tuple(cast(a) for a in case.args), {k: cast(v) for k, v in case.kwargs.items()})


def run_with_grads(fn, case: Case, grad_seed: int = 1):
    """Outputs of ``fn(case)`` and, if any input requires grad, the gradients for fixed random cotangents."""
    outs = as_tuple(fn(*case.args, **case.kwargs))
    inputs = case.grad_inputs()
    if not inputs:
        return outs, ()
    float_outs = [o for o in outs if o.is_floating_point() and o.requires_grad]
    g = torch.Generator(device="cpu").manual_seed(grad_seed)
    cotangents = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype) for o in float_outs]
    grads = torch.autograd.grad(float_outs, inputs, cotangents, allow_unused=True)
    grads = tuple(torch.zeros_like(i) if gr is None else gr for i, gr in zip(inputs, grads))
    return outs, grads


def compare(spec: OpSpec, case: Case, dtype: torch.dtype, *, tolerance=None, grad_tolerance=None, label=""):
    """Run ours in ``dtype`` and the reference in float64 on the same inputs; assert the errors are in bounds.

    ``case`` holds float64 inputs; ours gets them rounded to ``dtype``.

    bf16 (no fixed bound): ours must be within 2x the error of the reference itself run in bf16, plus 1e-3
    — the FlashAttention criterion.
    """
    ours_case = cast_case(case, dtype)
    outs, grads = run_with_grads(spec.fn, ours_case)
    # The reference sees the very inputs ours saw: rounded to dtype, then widened.
    ref_outs, ref_grads = run_with_grads(spec.reference, cast_case(ours_case, torch.float64))
    if spec.check_outputs is not None:
        spec.check_outputs(outs, ref_outs, ours_case)

    if dtype == torch.bfloat16:
        low_outs, low_grads = run_with_grads(spec.reference, ours_case)
        out_bounds = [2 * rel_err(lo, r) + 1e-3 for lo, r in zip(low_outs, ref_outs) if r.is_floating_point()]
        grad_bounds = [2 * rel_err(lo, r) + 1e-3 for lo, r in zip(low_grads, ref_grads)]
    else:
        tol = (tolerance or spec.tolerance)[dtype]
        gtol = (grad_tolerance or spec.grad_tolerance)[dtype]
        out_bounds = [tol] * len(outs)
        grad_bounds = [gtol] * len(grads)

    float_pairs = [(o, r) for o, r in zip(outs, ref_outs) if r.is_floating_point()]
    for i, ((o, r), bound) in enumerate(zip(float_pairs, out_bounds)):
        assert o.dtype == dtype, f"{label} output {i}: dtype {o.dtype}, expected {dtype}"
        err = rel_err(o, r)
        assert err <= bound, f"{label} output {i}: relative error {err:.3g} > {bound:.3g} ({dtype})"
    names = [f"grad {j}" for j in range(len(grads))]
    for name, g, r, bound in zip(names, grads, ref_grads, grad_bounds):
        err = rel_err(g, r)
        assert err <= bound, f"{label} {name}: relative error {err:.3g} > {bound:.3g} ({dtype})"
