"""Tests generated from the op registry: every op, forward and backward, against its float64 reference.

* ``test_matches_reference``: hypothesis draws the shape (the op's own strategy: sizes of one, odd and prime
  sizes, wide rows), the dtype, contiguous or strided inputs and a seed; outputs are NaN-poisoned.
* ``test_example``: the op's must-cover dims (``OpSpec.examples``).
* ``test_every_config``: each autotuned kernel of the op under each of its configs, on a shape that is not a
  multiple of any tile: run ``i`` forces config ``i`` of every kernel at once (a kernel with fewer: its last), so an
  op runs as many times as its longest config list, not once per kernel and config.
* ``test_bad_input``: each bad call the op lists raises the error it names.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from triton_playground.kernels import OPS, force_configs
from triton_playground.kernels import _runtime as rt
from tests.checks import compare
from tests.conftest import PROFILE

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if rt.GPU else [])
BIG = PROFILE == "gpu"


def _needs_grad(spec):
    return "bwd" in spec.modes


@pytest.mark.parametrize("name", list(OPS))
def test_matches_reference(name):
    spec = OPS[name]

    @given(dims=spec.dims(BIG), dtype=st.sampled_from(DTYPES), contiguous=st.booleans(), seed=st.integers(0, 2**16))
    def check(dims, dtype, contiguous, seed):
        case = spec.make_case(dims, torch.float64, rt.DEVICE, contiguous=contiguous,
                              requires_grad=_needs_grad(spec), seed=seed)
        compare(spec, case, dtype, label=f"{name} {dims} contiguous={contiguous}")

    check()


EXAMPLE_CASES = [pytest.param(name, dims, id=f"{name}-{i}") for name, spec in OPS.items()
                 for i, dims in enumerate(spec.examples)]


@pytest.mark.parametrize("name,dims", EXAMPLE_CASES)
def test_example(name, dims):
    """The op's own must-cover dims (paths a few random draws may miss), strided inputs, fp32 and fp16."""
    spec = OPS[name]
    case = spec.make_case(dims, torch.float64, rt.DEVICE, contiguous=False, requires_grad=_needs_grad(spec))
    for dtype in DTYPES:
        compare(spec, case, dtype, label=f"{name} {dims}")


CONFIG_CASES = [pytest.param(name, index, id=f"{name}-{index}") for name, spec in OPS.items()
                for index in range(max(len(kernel.configs) for kernel in spec.kernels))]


@pytest.mark.parametrize("name,index", CONFIG_CASES)
def test_every_config(name, index):
    spec = OPS[name]
    case = spec.make_case(spec.config_dims, torch.float64, rt.DEVICE, contiguous=False,
                          requires_grad=_needs_grad(spec), seed=index)
    forced = "; ".join(f"{k.name} {k.configs[min(index, len(k.configs) - 1)]}" for k in spec.kernels)
    with force_configs(spec.kernels, index):
        for dtype in DTYPES:
            compare(spec, case, dtype, label=f"configs {forced}")


BAD_CASES = [pytest.param(name, bad, id=f"{name}-{bad.label}") for name, spec in OPS.items() for bad in spec.bad_inputs]


@pytest.mark.parametrize("name,bad", BAD_CASES)
def test_bad_input(name, bad):
    case = bad.make()
    with pytest.raises(bad.error, match=bad.match):
        OPS[name].fn(*case.args, **case.kwargs)


def test_outputs_are_poisoned():
    """The tests above rely on this: an output element no kernel wrote reads as NaN, and NaN fails."""
    assert torch.isnan(rt.empty((4,), torch.float32, rt.DEVICE)).all()


@pytest.mark.skipif(not rt.INTERPRET, reason="bf16 is refused only under the interpreter; a GPU runs it")
@pytest.mark.parametrize("name", list(OPS))
def test_bf16_is_refused_under_the_interpreter(name):
    """The interpreter computes bf16 wrong (raw bits multiplied as integers): a bf16 call is refused, never run."""
    spec = OPS[name]
    case = spec.make_case(spec.config_dims, torch.bfloat16, rt.DEVICE)
    with pytest.raises(TypeError, match="bfloat16, which the Triton interpreter"):
        spec.fn(*case.args, **case.kwargs)
