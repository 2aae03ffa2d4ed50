"""Which ``input_precision`` every ``tl.dot`` of the playground uses, decided once.

fp32 inputs get ``"ieee"``: a GPU's default for an fp32 ``tl.dot`` is TF32 (a 10-bit mantissa, ~1e-3 relative
error), which would break fp32's 1e-4..1e-5 contracts; fp32 is the checking dtype, so it is computed exactly.
fp16/bf16 inputs are exact in any precision mode and run on the tensor cores with fp32 accumulators ("tf32" is
Triton's default mode name; for 16-bit inputs it changes nothing). Kernels take the result as a constexpr
``PRECISION`` and pass it to every ``tl.dot``.
"""

import torch


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for inputs of ``dtype``."""
    return "ieee" if dtype == torch.float32 else "tf32"
