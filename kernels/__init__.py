"""Triton kernels for GPT-2, OPT, Persimmon and OLMoE, each beside its PyTorch reference.

Importing this package picks the backend: compiled kernels on a CUDA GPU, the Triton interpreter on the CPU
(``TRITON_INTERPRET=1`` is set before Triton loads). See ``kernels/_runtime.py``. The ops live one folder each
under ``kernels/ops/`` (``kernels/registry.py`` lists them); ``kernels.count()`` counts what kernels execute
(``kernels/perf/``).
"""

from ._runtime import INTERPRET, backend, force_config  # noqa: F401  (first: sets TRITON_INTERPRET)
from .ops.attention import attention  # noqa: F401
from .ops.layer_norm import layer_norm, rms_norm  # noqa: F401
from .ops.mlp import mlp, squared_relu_mlp  # noqa: F401
from .ops.moe import moe  # noqa: F401
from .ops.rope import partial_rope, partial_rope_qk  # noqa: F401
from .ops.routing import topk_routing  # noqa: F401
from .perf import count  # noqa: F401
from .registry import OPS  # noqa: F401
