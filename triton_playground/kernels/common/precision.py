"""Which ``input_precision`` every ``tl.dot`` of the playground uses, decided once.

fp16/bf16 inputs are exact in any precision mode and run on the tensor cores with fp32 accumulators ("tf32" is
Triton's default mode name; for 16-bit inputs it changes nothing). Kernels take the result as a constexpr
``PRECISION`` and pass it to every ``tl.dot``.

fp32 inputs never get plain "tf32", a GPU's default for an fp32 ``tl.dot`` (a 10-bit mantissa, ~1e-3 relative
error), which would break fp32's 1e-4..1e-5 contracts. They get one of two accurate modes:

* ``"ieee"`` (:func:`dot_precision`, the GEMMs: MLP, MoE, the router): fp32 FMAs on the CUDA cores. Their
  tiles are sized for it (each thread holds ``BLOCK_M * BLOCK_N / threads`` accumulators and a slice of K).
* ``"tf32x3"`` (:func:`attention_dot_precision`): each operand split into a TF32 high part and a TF32 remainder,
  ``a·b ≈ hi_a·hi_b + hi_a·lo_b + lo_a·hi_b`` on the tensor cores (wgmma), ~2^-21 relative per product, three
  times the tensor-core FLOPs (the counters charge them). Attention's dots hold whole head-dim rows of q and dO
  per thread across the key loop, which Triton's FMA dot cannot keep in registers: in "ieee" every attention
  config spilled on sm_90 (50 to 170 KB a thread at head dim 128, ``triton-playground report attention --dtype
  fp32``) and took ptxas a minute per kernel; in "tf32x3" the same tiles run on HGMMA with at most a few KB.

The interpreter ignores ``input_precision`` (numpy multiplies in fp32); ``kernels/_runtime.py`` rounds fp32
operands to TF32 the way the GPU does, so the CPU tests check what these modes really compute.
"""

import torch


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for GEMM inputs of ``dtype``: "ieee" for fp32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def attention_dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for attention's inputs of ``dtype``: "tf32x3" for fp32 (see above)."""
    return "tf32x3" if dtype == torch.float32 else "tf32"
