"""What this project changes in Triton's interpreter (the CPU backend), and why: each change keeps what a kernel
computes, either to match a GPU where the interpreter does not, or to spend less Python on the same numpy work.

* :func:`interpret_triton_language`: triton.language's own helpers interpretable when triton came first;
* :func:`emulate_tf32_dots`: ``tl.dot`` rounds fp32 operands to TF32 as an H100's tensor cores do;
* :func:`bind_language_once_a_launch`: the language is bound to the interpreter once a launch, not once a call;
* :func:`memoize_types`: the interpreter's types are built once each, not once an operation;
* :func:`reduce_xor_in_numpy`: ``tl.xor_sum`` (sorting's bitonic merge) in numpy, not an element at a time.

``kernels/_runtime.py`` applies them when it picks the interpreter; a GPU or a compile-only process never sees
them.
"""

from __future__ import annotations

import math
import sys


def interpret_triton_language() -> None:
    """Make triton.language's own ``@triton.jit`` helpers (tl.sum's combine function, tl.cdiv, ...) interpretable
    when triton was imported before the interpreter was chosen (``import transformers`` first): they were built
    as compiled functions then, and a compiled function cannot be called from an interpreted kernel. Each becomes
    the interpreted function the decorator would have made, over the same Python source."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("triton.language"):
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                setattr(module, attr, InterpretedFunction(value.fn, do_not_specialize=value.do_not_specialize))


def _tf32(x, round_to_nearest: bool):
    """fp32 array -> the TF32 values an H100's tensor cores see: the top 10 mantissa bits, rounded to nearest
    (ties away, ``cvt.rna.tf32.f32``) or truncated (what the MMA does with the remaining bits of an fp32 operand).
    Infinities and NaNs pass unchanged."""
    import numpy as np

    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    if round_to_nearest:
        bits = bits + np.uint32(0x1000)
    out = (bits & np.uint32(0xFFFFE000)).view(np.float32)
    return np.where(np.isfinite(x), out, x)


def emulate_tf32_dots():
    """The interpreter's ``tl.dot`` multiplies fp32 operands in full fp32 whatever ``input_precision`` says; on a
    GPU "tf32" truncates them to TF32 and "tf32x3" (``kernels/common/precision.py``) adds the products of the
    TF32 remainders, as Triton's F32DotTC pass lowers it: ``hi = rna(a)``, ``lo = a - hi`` (truncated by the
    MMA), ``hi_a·lo_b + lo_a·hi_b + hi_a·hi_b``. Emulated here, so CPU tests check what a GPU computes."""
    import numpy as np
    from triton.runtime import interpreter as interp

    dot = interp.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        mode = str(input_precision).rsplit(".", 1)[-1]
        if mode in ("TF32", "TF32x3") and a.dtype.scalar.name == "fp32" and b.dtype.scalar.name == "fp32":
            ad, bd, acc = a.data, b.data, d.data
            if mode == "TF32":
                acc = acc + np.matmul(_tf32(ad, False), _tf32(bd, False), dtype=np.float32)
            else:
                a_hi, b_hi = _tf32(ad, True), _tf32(bd, True)
                a_lo, b_lo = _tf32(ad - a_hi, False), _tf32(bd - b_hi, False)
                acc = acc + (np.matmul(a_hi, b_lo, dtype=np.float32) + np.matmul(a_lo, b_hi, dtype=np.float32))
                acc = acc + np.matmul(a_hi, b_hi, dtype=np.float32)
            return interp.TensorHandle(acc.astype(np.float32), d.dtype.scalar)
        return dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    interp.InterpreterBuilder.create_dot = create_dot


def bind_language_once_a_launch():
    """The interpreter binds ``triton.language`` to itself at each launch (``_patch_lang``: every builtin of four
    modules, found by ``inspect.getmembers``, about a millisecond) and again at every call of a ``@triton.jit``
    helper inside it, though the launch's binding is still in place: a quarter of an interpreted attention's time
    went there. A helper now binds only language modules the running launch has not (the launch's own binding is
    undone when it ends, as before; a helper's never was)."""
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter as interp

    bind = interp._patch_lang
    bound: list[set] = []  # per running launch: the ids of the language modules it has bound

    seen: dict[int, frozenset] = {}  # id of a module's globals -> the language modules among them

    def languages(fn) -> frozenset:
        found = seen.get(id(fn.__globals__))
        if found is None:  # a module imports its language modules once, at its top: asked once a module
            found = seen[id(fn.__globals__)] = frozenset(
                id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and (v is tl or v is tl.core))
        return found

    class _Launch:
        def __init__(self, scope):
            self.scope = scope

        def restore(self):
            self.scope.restore()
            bound.pop()

    def patch_lang(fn):
        mine = languages(fn)
        if not bound:  # a launch (GridExecutor, or the counters' sampled grid): it restores its scope at its end
            scope = _Launch(bind(fn))
            bound.append(set(mine))
            return scope
        if not mine <= bound[-1]:  # a helper seeing a language module the launch did not bind
            bound[-1] |= mine
            return bind(fn)
        return _Launch.__new__(_Launch)  # already bound: nothing to do (a helper's scope is never restored)

    interp._patch_lang = patch_lang


def memoize_types() -> None:
    """Every interpreted operation goes through triton.language's type checks, which build a new ``block_type``
    for each result (its shape normalised and validated, its name formatted), a new ``tl.tuple`` of constexprs
    for each result's shape (with a ``tuple_type`` built from its values), and a new dict to map the result's
    element type to a numpy dtype: over half of an interpreted MoE's time, for values that repeat at every
    operation. Here a block type is built once per (element type, shape) and then shared (they are never
    changed after construction), so is the shape tuple of the tensors of one block type (kernels only read it), a
    tuple's type is built when first asked for (few are), and the numpy dtypes are looked up in a dict built once. Results are unchanged: the same types, equal by value."""
    import triton.language.core as core
    from triton.runtime import interpreter as interp

    np_dtype, np_dtypes = interp._get_np_dtype, {}

    def get_np_dtype(tt_dtype):
        if isinstance(tt_dtype, core.block_type):  # a block's numpy dtype is its element's
            tt_dtype = tt_dtype.element_ty
        if isinstance(tt_dtype, core.pointer_type):
            return np_dtype(tt_dtype)
        found = np_dtypes.get(tt_dtype)
        if found is None:
            found = np_dtypes[tt_dtype] = np_dtype(tt_dtype)
        return found

    blocks: dict = {}

    def _hashable(ty):  # a pointer type defines == but no hash: its fields stand for it
        if isinstance(ty, core.pointer_type):
            return ("*", _hashable(ty.element_ty), ty.address_space, ty.const)
        return ty

    def block_type(element_ty, shape):
        if not all(type(s) is int for s in shape):  # constexprs: the original, uncached (rare)
            return core.block_type(element_ty, shape)
        key = (_hashable(element_ty), *shape)
        found = blocks.get(key)
        if found is None:
            found = blocks[key] = core.block_type(element_ty, shape)
        return found

    tuple_init = core.tuple.__init__

    def lazy_tuple_init(self, args, type=None):
        if type is None:  # the type follows from the values: built on first use
            self.values = list(args)
            self.__dict__["_type"] = None
        else:
            tuple_init(self, args, type)

    def tuple_type(self):
        found = self.__dict__.get("_type")
        if found is None:
            found = self.__dict__["_type"] = core._type_for_tuple_values(self.values)
        return found

    def set_tuple_type(self, value):
        self.__dict__["_type"] = value

    def tensor_init(self, handle, type):  # as core.tensor.__init__, a block type's shape tuple made once
        self.handle, self.type, self.dtype = handle, type, type.scalar
        shape = type.__dict__.get("_tensor_shape") if type.is_block() else ()
        if shape is None:
            shape = type._tensor_shape = (core.tuple([core.constexpr(s) for s in type.shape]),
                                          core.constexpr(math.prod(type.shape)))
        self.shape, self.numel = shape if shape else (core.tuple([]), core.constexpr(1))

    interp._get_np_dtype = get_np_dtype
    interp.InterpreterBuilder.get_block_ty = lambda self, dtype, shape: block_type(dtype, shape)
    core.block_type.with_element_ty = lambda self, scalar_ty: block_type(scalar_ty, self.shape)
    core.tuple.__init__ = lazy_tuple_init
    core.tuple.type = property(tuple_type, set_tuple_type)
    core.tensor.__init__ = tensor_init


def reduce_xor_in_numpy() -> None:
    """``tl.xor_sum`` (the bitonic merge of ``tl.sort`` / ``tl.topk``, in Liger's MoE router, say) is a reduction the
    interpreter knows no numpy twin of: it calls the interpreted combine function once an element, a second of
    Python per 1k-element sort step. Its numpy twin is ``np.bitwise_xor.reduce``, the same integers exactly (xor is
    associative and commutative: any order gives the same bits)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as interp

    apply_impl = interp.ReduceOps.apply_impl

    def reduce(self, input):
        if self.combine_fn == tl.standard._xor_combine:
            data = input[0].handle.data
            out = np.bitwise_xor.reduce(data, axis=self.axis, keepdims=self.keep_dims)
            return self.to_tensor(out, input[0].dtype)
        return apply_impl(self, input)

    interp.ReduceOps.apply_impl = reduce


def install() -> None:
    """Everything above but :func:`interpret_triton_language` (which ``_runtime`` calls first, when needed)."""
    emulate_tf32_dots()
    bind_language_once_a_launch()
    memoize_types()
    reduce_xor_in_numpy()
