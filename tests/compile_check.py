"""Compile every kernel of every op, under every config, for an H100 (sm_90), without a GPU.

The interpreter accepts code the compiler rejects (a variable bound in one branch of a runtime ``if``, a dot
tile under 16, shared memory past the chip's limit). This drives each op's wrappers, forward and backward, in
bf16 and fp32 on its ``config_dims`` case, with ``KERNELS_COMPILE_ONLY=1``: each launch compiles the kernel
through Triton's real pipeline down to a cubin (ptxas ships with Triton) against a stand-in driver, and runs
nothing. Outputs are therefore garbage; only compilation is checked.

    python -m tests.compile_check [OP ...]        (a fresh process: it must set the environment first)
"""

import os
import sys

# set before kernels (hence triton) is imported: kernels.report.compile_only.ENVIRONMENT, spelt out
os.environ.update({"TRITON_INTERPRET": "0", "KERNELS_COMPILE_ONLY": "1"})

import torch  # noqa: E402

from triton_playground import kernels  # noqa: E402
from triton_playground.kernels import _runtime as rt  # noqa: E402
from triton_playground.kernels.report import compile_only  # noqa: E402
from triton_playground.kernels.spec import Case  # noqa: E402

compile_only.install(90, force=True)  # the stand-in H100 driver (shared with the report)


def _lowp(case: Case, dtype) -> Case:
    def cast(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.detach().to(dtype).requires_grad_(a.requires_grad)
        return a

    return Case(tuple(cast(a) for a in case.args), {k: cast(v) for k, v in case.kwargs.items()})


def check(names) -> list[str]:
    failures = []
    for name in names:
        spec = kernels.OPS[name]
        for kernel in spec.kernels:
            for index, config in enumerate(kernel.configs):
                for dtype in (torch.bfloat16, torch.float32):
                    case = _lowp(spec.make_case(spec.config_dims, torch.float64, "cpu",
                                                requires_grad="bwd" in spec.modes), dtype)
                    try:
                        with kernels.force_config(kernel, index):
                            outs = spec.fn(*case.args, **case.kwargs)
                            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
                            outs = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
                            if outs and case.grad_inputs():
                                torch.autograd.grad(outs, case.grad_inputs(), [torch.ones_like(o) for o in outs],
                                                    allow_unused=True)
                    except Exception as e:  # noqa: BLE001  (collect every failure, report them all)
                        failures.append(f"{name} {kernel.name} config {index} ({config}) {dtype}: "
                                        f"{type(e).__name__}: {e}")
                        print("FAIL", failures[-1].splitlines()[0], flush=True)
        print(f"{name}: compiled", flush=True)
    return failures


if __name__ == "__main__":
    names = sys.argv[1:] or list(kernels.OPS)
    failures = check(names)
    kinds = {(k, c) for k, c, _ in rt.compiled}
    most = max((s for _, _, s in rt.compiled), default=0)
    print(f"{len(kinds)} kernel/config pairs compiled for sm_90; most shared memory {most} bytes")
    if failures:
        print("\n\n".join(failures))
        sys.exit(1)
