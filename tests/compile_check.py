"""Compile the kernels of every op for an H100 (sm_90), under every config, in bf16 and fp32, without a GPU.

The interpreter accepts code the compiler rejects (a variable bound in one branch of a runtime ``if``, a dot
tile under 16, shared memory past the chip's limit). This drives each op's wrappers, forward and backward, in
bf16 and fp32 on its ``config_dims`` case (a shape no tile divides), with ``KERNELS_COMPILE_ONLY=1``: each launch
compiles the kernel through Triton's real pipeline down to a cubin (ptxas ships with Triton) against a stand-in
driver, and runs nothing. Outputs are therefore garbage; only compilation is checked.

Run ``i`` forces config ``i`` of every kernel of the op (its last where it has fewer). In fp32, what compiles is
what the report compiles (``kernels/report/collect.py``): every launch whose config the kernel's prune rule keeps
for that launch's arguments (the autotuner may run it there), and each (kernel, config) once at least, at its
first launch, where the rule drops it everywhere (fp32's 128x256 GEMM tiles, which spill; TMA configs, whose
descriptors no odd shape fits): a config that can never run there is compiled once, not at every launch. In bf16
each (kernel, config) compiles at its first launch: ``tests/test_report.py`` compiles every bf16 launch the
autotuner may pick, at the sweep's shapes, where the TMA configs run too.

    python -m tests.compile_check [OP ...]        (a fresh process: it must set the environment first)
"""

import os
import sys

# set before kernels (hence triton) is imported: kernels.report.compile_only.ENVIRONMENT, spelt out
os.environ.update({"TRITON_INTERPRET": "0", "KERNELS_COMPILE_ONLY": "1"})

import torch  # noqa: E402

from triton_playground import kernels  # noqa: E402
from triton_playground.kernels import _runtime as rt  # noqa: E402
from triton_playground.kernels.report import collect, compile_only  # noqa: E402
from triton_playground.kernels.spec import Case  # noqa: E402

compile_only.install(90, force=True)  # the stand-in H100 driver (shared with the report)


def _lowp(case: Case, dtype) -> Case:
    def cast(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.detach().to(dtype).requires_grad_(a.requires_grad)
        return a

    return Case(tuple(cast(a) for a in case.args), {k: cast(v) for k, v in case.kwargs.items()})


def check(names) -> tuple[list[str], int]:
    """(the failures, the number of launches compiled)."""
    failures, compiled = [], 0
    for name in names:
        spec = kernels.OPS[name]
        tuned = collect.op_kernels(spec)  # every autotuned kernel of the op's package: each launch is decided
        for dtype in (torch.bfloat16, torch.float32):
            once: set = set()  # (kernel, config) compiled where the prune rule drops it

            def wanted(launch, fp32=dtype == torch.float32) -> bool:
                key = (launch.kernel.name, launch.config)
                if (fp32 and launch.config in launch.kept) or key not in once:
                    once.add(key)
                    return True
                return False

            for index in range(max(len(k.configs) for k in tuned)):
                case = _lowp(spec.make_case(spec.config_dims, torch.float64, "cpu",
                                            requires_grad="bwd" in spec.modes), dtype)
                label, before = f"{name} config {index} {dtype}", len(failures)
                try:
                    with rt.force_configs(tuned, index), collect.recording(tuned, compile=wanted) as launches:
                        collect.run_case(spec, case)
                except Exception as e:  # noqa: BLE001  (collect every failure, report them all)
                    failures.append(f"{label}: {type(e).__name__}: {e}")
                for launch in launches:
                    config = f"{launch.kernel.name} {launch.kernel.configs[launch.config]} [{launch.variant}]"
                    if launch.error:
                        failures.append(f"{label}: {config}: {launch.error}")
                    elif launch.compiled is not None:
                        compiled += 1
                        shared = launch.compiled.metadata.shared
                        if shared > rt.H100_SHARED_MEMORY:
                            failures.append(f"{label}: {config} needs {shared} bytes of shared memory; an H100 "
                                            f"program has {rt.H100_SHARED_MEMORY}")
                for failure in failures[before:]:
                    print("FAIL", failure.splitlines()[0], flush=True)
        print(f"{name}: compiled", flush=True)
    return failures, compiled


if __name__ == "__main__":
    names = sys.argv[1:] or list(kernels.OPS)
    failures, compiled = check(names)
    print(f"{compiled} launches compiled for sm_90")
    if failures:
        print("\n\n".join(failures))
        sys.exit(1)
