"""Triton kernels for GPT-2, OPT, Persimmon and OLMoE, each beside its PyTorch reference.

Importing this package picks the backend: compiled kernels on a CUDA GPU, the Triton interpreter on the CPU
(``TRITON_INTERPRET=1`` is set before Triton loads). See ``kernels/_runtime.py``. The ops live one folder each
under ``kernels/ops/`` (``kernels/registry.py`` lists them); ``kernels.count()`` counts what kernels execute
(``kernels/perf/``). ``kernels.attention`` and the other public functions run the ops as ``torch.library`` custom
ops, ``torch.ops.playground.*`` (``kernels/library.py``), which ``torch.compile`` traces without a graph break.
"""

from ._runtime import INTERPRET, backend, force_config, force_configs  # noqa: F401  (first: sets TRITON_INTERPRET)
# the public ops call the torch.library custom ops (torch.ops.playground.*) that kernels/library.py registers
from .library import (attention, attention_varlen, layer_norm, mlp, moe, partial_rope,  # noqa: F401
                      partial_rope_qk, rms_norm, squared_relu_mlp, topk_routing)
from .perf import count  # noqa: F401
from .registry import OPS  # noqa: F401
