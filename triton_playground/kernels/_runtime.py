"""Where the kernels run, how they are tuned, and the small checks every wrapper shares.

Two backends, chosen once at import time:

* a CUDA GPU: kernels are compiled, and ``@autotune`` is Triton's autotuner (timings cached on disk);
* no GPU: ``TRITON_INTERPRET=1`` is set *before* Triton is imported, so every ``@triton.jit`` kernel runs
  under the Triton interpreter on CPU tensors. The autotuner cannot benchmark there (it needs a driver), so
  ``@autotune`` launches one config itself: the kernel's ``default`` config, or whichever config a test forced
  with :func:`force_config`. Tests walk every config of every kernel that way, so a tile size that breaks at
  a boundary fails on the CPU, not later on the GPU.

Also here: :func:`empty`, the output allocator that fills outputs with NaN while tests ask for it (so an
element a kernel forgot to write cannot pass as a lucky zero), and the argument checks that turn bad input into
a ``ValueError``/``TypeError`` that names the argument instead of a Triton compile error.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch

GPU = torch.cuda.is_available()
_TRITON_CAME_FIRST = "triton" in sys.modules  # transformers 5 imports it (through Hugging Face's kernels package)
if not GPU and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402  (must come after TRITON_INTERPRET is settled)

from . import _interpreter  # noqa: E402

if _TRITON_CAME_FIRST and not GPU and os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter.interpret_triton_language()

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if INTERPRET:
    _interpreter.install()  # its fixes and fast paths (kernels/_interpreter.py)
# Compile-only mode (tests/compile_check.py): no GPU, no interpreter; every launch compiles the kernel for an
# H100 (sm_90) and checks its shared memory, but runs nothing. Catches what the interpreter lets through.
COMPILE_ONLY = os.environ.get("KERNELS_COMPILE_ONLY") == "1"
DEVICE = torch.device("cuda" if GPU and not INTERPRET else "cpu")
H100_SHARED_MEMORY = 232448  # bytes a program may use on sm_90
compiled: list = []  # (kernel name, config, shared bytes) of every compile-only launch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Triton 3.6's interpreter keeps bf16 as raw uint16 bits and multiplies those as integers in tl.dot (and in any
# arithmetic done in bf16), so a bf16 kernel under the interpreter returns garbage. Refused, never run.
BF16_UNDER_INTERPRETER = (
    "{name} is bfloat16, which the Triton interpreter (no GPU here) cannot compute correctly: it treats bf16 "
    "values as 16-bit integers in tl.dot. Use float32 or float16 on the CPU, or run on a GPU."
)


# Tensor-memory-accelerator (TMA) loads: kernels build tensor descriptors on the device
# (``tl.make_tensor_descriptor``), which needs a little global scratch per launch for the descriptors; Triton
# asks a process-wide allocator for it. The interpreter and compile-only mode allocate nothing.
TMA = COMPILE_ONLY or INTERPRET or (GPU and torch.cuda.get_device_capability()[0] >= 9)


def _descriptor_scratch(size: int, alignment: int, stream):
    return torch.empty(size, device="cuda", dtype=torch.int8)


if GPU and not INTERPRET and not COMPILE_ONLY:
    triton.set_allocator(_descriptor_scratch)


def tma_ok(*tensors: torch.Tensor) -> bool:
    """Whether TMA can load these tensors' tiles: this device has it (sm_90+, or compile-only/interpreter), each
    tensor's last dim is contiguous, its other strides and its start are 16-byte aligned (what a tensor descriptor
    requires; a config with ``TMA`` is pruned for a call that fails this). The start is judged by the storage
    offset (PyTorch's allocations are aligned far beyond 16 bytes), so fake tensors are judged too."""
    if not TMA:
        return False
    for t in tensors:
        size = t.element_size()
        if t.stride(-1) != 1 or (t.storage_offset() * size) % 16 or any((s * size) % 16 for s in t.stride()[:-1]):
            return False
    return True


def backend() -> str:
    """A one-word name of where kernels run: 'interpreter' or the GPU's name."""
    if INTERPRET:
        return "interpreter"
    if COMPILE_ONLY:
        return "compile-only"
    return torch.cuda.get_device_name()


_modeled_sms: list[int] = []


def num_sms() -> int:
    """Multiprocessors to size persistent grids by: the GPU's; under the interpreter a small stand-in keeps tests
    quick, unless a model of a real GPU is being counted (:func:`modeled_sms`), whose grids must be the real ones."""
    if _modeled_sms:
        return _modeled_sms[-1]
    if GPU and not INTERPRET:
        return torch.cuda.get_device_properties(0).multi_processor_count
    return 4


def sized_for_gpu() -> bool:
    """Whether launches are sized as on a real GPU: on one, or under the interpreter while a model of one is being
    counted (:func:`modeled_sms`). Else the interpreter's stand-in sizes (small tiles, fewer programs), which keep
    tests quick but are no GPU's choice, and a model of them would not be a model of what a GPU runs."""
    return not INTERPRET or bool(_modeled_sms)


@contextlib.contextmanager
def modeled_sms(count: int):
    """Within the block, :func:`num_sms` answers ``count`` (the counters size grids as that GPU would)."""
    _modeled_sms.append(count)
    try:
        yield
    finally:
        _modeled_sms.pop()


# --------------------------------------------------------------------------------------------------------------
# Autotuning
# --------------------------------------------------------------------------------------------------------------

_forced: dict[str, int] = {}


class Tuned:
    """An autotuned kernel: ``kernel[grid](*args)`` launches it with a config from ``configs``.

    On a GPU the config is Triton's autotuner's choice, keyed on ``key``; under the interpreter (or while a test
    forces one) it is launched directly: the forced one, else ``default``. ``default`` names a config by its
    meta-parameters (``{"BLOCK_M": 64, "num_warps": 4}``: the one config whose kwargs, and ``num_warps`` /
    ``num_stages`` if given, match), or is None when there is only one config. ``prune(configs, named_args)``
    may drop configs that cannot serve a given call (say, a tile wider than the problem); it must leave at least
    one, and under the interpreter a default that does not fit gives way to the first config that does.
    """

    def __init__(self, fn, configs, key, default=None, prune=None, reset_to_zero=None):
        self.fn = fn
        self.name = fn.__name__
        self.configs = list(configs)
        self.default = find_config(self.configs, default, self.name)
        self.prune = prune
        self.arg_names = list(fn.arg_names)
        self._autotuner = None
        if not INTERPRET and not COMPILE_ONLY and len(self.configs) > 1:
            prune_by = {"early_config_prune": lambda cs, nargs, **kw: prune(cs, {**nargs, **kw})} if prune else None
            self._autotuner = triton.autotune(self.configs, key=key, cache_results=True,
                                              prune_configs_by=prune_by, reset_to_zero=reset_to_zero)(fn)

    def __repr__(self):
        return f"Tuned({self.name}, {len(self.configs)} configs)"

    def __getitem__(self, grid):
        index = _forced.get(self.name)
        if index is None and self._autotuner is not None:
            return self._autotuner[grid]

        def launch(*args, **kwargs):
            config = self.default if index is None else self.configs[index]
            if index is None and self.prune is not None:
                # Under the interpreter the default may not fit this call: take the first config that does.
                fitting = self.prune(self.configs, dict(zip(self.arg_names, args)) | kwargs)
                config = config if config in fitting else fitting[0]
            self._last_config = config
            if COMPILE_ONLY:
                kernel = self.fn.warmup(*args, grid=grid, **kwargs, **config.all_kwargs())
                compiled.append((self.name, str(config), kernel.metadata.shared))
                if kernel.metadata.shared > H100_SHARED_MEMORY:
                    raise RuntimeError(f"{self.name} with {config} needs {kernel.metadata.shared} bytes of shared "
                                       f"memory; an H100 program has {H100_SHARED_MEMORY}")
                return kernel
            return self.fn[grid](*args, **kwargs, **config.all_kwargs())

        return launch

    def forced_config(self):
        """The config a test forces on this kernel now (:func:`force_config`), or None: a launch whose host code
        depends on the tile (it skips launches a larger tile makes unnecessary) asks before launching, since a
        forced config bypasses the prune rule."""
        index = _forced.get(self.name)
        return None if index is None else self.configs[index]

    def last_config(self):
        """The config of the latest launch (Triton's pick on a GPU), or None before the first."""
        if _forced.get(self.name) is None and self._autotuner is not None:
            return getattr(self._autotuner, "best_config", None)
        return getattr(self, "_last_config", None)


def find_config(configs, named: dict | None, kernel_name: str):
    """The one config of ``configs`` that ``named`` describes (see :class:`Tuned`); a typo fails at import."""
    if named is None:
        if len(configs) != 1:
            raise ValueError(f"{kernel_name}: {len(configs)} configs, so a default config must be named")
        return configs[0]
    launch = {"num_warps", "num_stages"}
    matches = [c for c in configs
               if all((getattr(c, k) if k in launch else c.kwargs.get(k)) == v for k, v in named.items())]
    if len(matches) != 1:
        raise ValueError(f"{kernel_name}: default {named} matches {len(matches)} of its configs, not exactly one")
    return matches[0]


def autotune(configs, key, default=None, prune=None, reset_to_zero=None):
    """Decorator: ``@autotune(configs, key=[...], default={...})`` above ``@triton.jit`` makes a :class:`Tuned`.
    ``reset_to_zero``: the names of arguments the kernel accumulates into (atomics), which Triton's autotuner zeroes
    before each of its timing runs (else every run would add to the last)."""
    return lambda fn: Tuned(fn, configs, key, default=default, prune=prune, reset_to_zero=reset_to_zero)


@contextlib.contextmanager
def force_config(kernel: Tuned, index: int):
    """Within the block, every launch of ``kernel`` uses ``kernel.configs[index]`` (GPU and interpreter alike)."""
    if not 0 <= index < len(kernel.configs):
        raise ValueError(f"index must be in [0, {len(kernel.configs)}) for {kernel.name}, got {index}")
    previous = _forced.get(kernel.name)
    _forced[kernel.name] = index
    try:
        yield
    finally:
        if previous is None:
            _forced.pop(kernel.name, None)
        else:
            _forced[kernel.name] = previous


@contextlib.contextmanager
def force_configs(kernels, index: int):
    """Within the block, each of ``kernels`` uses its config ``index``, or its last where it has fewer: every
    kernel of an op under every one of its configs in as many runs as its longest list."""
    with contextlib.ExitStack() as stack:
        for kernel in kernels:
            stack.enter_context(force_config(kernel, min(index, len(kernel.configs) - 1)))
        yield


# --------------------------------------------------------------------------------------------------------------
# Output allocation
# --------------------------------------------------------------------------------------------------------------

_poison = False


def set_poison(on: bool) -> None:
    """While on, :func:`empty` fills what it allocates with NaN (integers with -1). Tests turn it on."""
    global _poison
    _poison = on


def set_overflow_checks(on: bool) -> None:
    """Whether the interpreter checks each int32 ``+ - *`` of a kernel for overflow (recomputing it in int64):
    Triton's interpreter does by default, and it is a third of an interpreted MoE's time. A compiled kernel checks
    nothing. The suite turns it off: at its shapes no int32 index comes near 2**31. Real sizes (the sweeps) keep
    it. No effect on a GPU."""
    if INTERPRET:
        import dataclasses

        from triton.runtime import interpreter as interp

        builder = interp.interpreter_builder
        builder.options = dataclasses.replace(builder.options, sanitize_overflow=on)


def empty(shape, dtype, device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs; poisoned while tests ask for it."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if _poison:
        with uncounted():  # the fill is the tests' check, not the kernel's work
            out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


_uncounted = [contextlib.nullcontext]  # the counters (kernels/perf/counters.py) put theirs here on import


def uncounted():
    """A block whose work is bookkeeping, not the program's (the tests' NaN fill, a custom op's placeholder
    outputs, a peer's tables made outside the count): the counters' ``uncounted``, which they install here when
    imported (the runtime imports nothing above it); a plain block before that, when nothing is counted."""
    return _uncounted[0]()


# --------------------------------------------------------------------------------------------------------------
# Argument checks (each names the argument and what was expected)
# --------------------------------------------------------------------------------------------------------------


def check_tensor(name: str, t, *, float_only=True, rank=None, min_rank=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if float_only and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if float_only and INTERPRET and t.dtype == torch.bfloat16:
        raise TypeError(BF16_UNDER_INTERPRETER.format(name=name))
    if rank is not None and t.dim() != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(t.shape)}")
    if min_rank is not None and t.dim() < min_rank:
        raise ValueError(f"{name} must have rank >= {min_rank}, got shape {tuple(t.shape)}")


def check_like(name: str, t, ref_name: str, ref: torch.Tensor, shape=None) -> None:
    """``t`` is a tensor of ``ref``'s dtype and device (and of ``shape``, when given)."""
    check_tensor(name, t)
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_positive(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
