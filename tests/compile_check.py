"""Compile the kernels of every op for an H100 (sm_90) in fp32, at a shape no tile divides, without a GPU.

The interpreter accepts code the compiler rejects (a variable bound in one branch of a runtime ``if``, a dot
tile under 16, shared memory past the chip's limit). This drives each op's wrappers, forward and backward, in fp32
on its ``config_dims`` case (a shape no tile divides: every load and store masked) and its ``compile_examples``
(variants the host picks from sizes, such as attention's dq added from the dK/dV pass at 4096 keys), with
``KERNELS_COMPILE_ONLY=1``: each launch compiles the kernel through Triton's real pipeline down to a cubin (ptxas
ships with Triton) against a stand-in driver, and runs nothing. Outputs are therefore garbage; only compilation
is checked.

Run ``i`` forces config ``i`` of every kernel of the op (its last where it has fewer). What compiles is what the
autotuner may run at this shape: every launch whose config the kernel's prune rule keeps for that launch's
arguments. The rest is compiled elsewhere, once: ``tests/test_report.py`` compiles every (kernel, config) in bf16,
the sweep's dtype, at the sweep's shapes (each config at least once, and every launch the autotuner may pick
there) and checks each compiles, fits an H100's shared memory and, where it may be picked, does not spill. So
each (kernel, config) is compiled for sm_90, and each fp32 launch the autotuner may run at an odd shape too; an
fp32 config the rule drops (fp32's 128x256 GEMM tiles, which spill; TMA configs, whose descriptors no odd shape
fits) would never run there, and is not compiled there.

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


def _cast(case: Case, dtype) -> Case:
    def cast(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.detach().to(dtype).requires_grad_(a.requires_grad)
        return a

    return Case(tuple(cast(a) for a in case.args), {k: cast(v) for k, v in case.kwargs.items()})


def _may_run(launch) -> bool:
    """Whether the autotuner may run this launch's config: the kernel's prune rule keeps it for its arguments."""
    return launch.config in launch.kept


def check(names) -> tuple[list[str], int]:
    """(the failures, the number of launches compiled)."""
    failures, compiled = [], 0
    for name in names:
        spec = kernels.OPS[name]
        tuned = collect.op_kernels(spec)  # every autotuned kernel of the op's package: each launch is decided
        variants = set()
        for index in range(max(len(k.configs) for k in tuned)):
            label, before, launches = f"{name} config {index} fp32", len(failures), []
            for dims in (spec.config_dims, *spec.compile_examples):
                case = _cast(spec.make_case(dims, torch.float64, "cpu", requires_grad="bwd" in spec.modes),
                             torch.float32)
                try:
                    with rt.force_configs(tuned, index), collect.recording(tuned, compile=_may_run) as more:
                        collect.run_case(spec, case)
                except Exception as e:  # noqa: BLE001  (collect every failure, report them all)
                    failures.append(f"{label} {dims}: {type(e).__name__}: {e}")
                launches += more
            for launch in launches:
                config = f"{launch.kernel.name} {launch.kernel.configs[launch.config]} [{launch.variant}]"
                if launch.error:
                    failures.append(f"{label}: {config}: {launch.error}")
                elif launch.compiled is not None:
                    compiled += 1
                    variants.add(f"{launch.kernel.name} [{launch.variant}]")
                    shared = launch.compiled.metadata.shared
                    if shared > rt.H100_SHARED_MEMORY:
                        failures.append(f"{label}: {config} needs {shared} bytes of shared memory; an H100 "
                                        f"program has {rt.H100_SHARED_MEMORY}")
            for failure in failures[before:]:
                print("FAIL", failure.splitlines()[0], flush=True)
        print(f"{name}: compiled", "; ".join(sorted(variants)), flush=True)
    return failures, compiled


if __name__ == "__main__":
    names = sys.argv[1:] or list(kernels.OPS)
    failures, compiled = check(names)
    print(f"{compiled} launches compiled for sm_90")
    if failures:
        print("\n\n".join(failures))
        sys.exit(1)
