"""Triton kernels for GPT-2, OPT, Persimmon and OLMoE, each beside its PyTorch reference.

Importing this package picks the backend: compiled kernels on a CUDA GPU, the Triton interpreter on the CPU
(``TRITON_INTERPRET=1`` is set before Triton loads). See ``kernels/_runtime.py``. The ops live one folder each
under ``kernels/ops/`` (``kernels/registry.py`` lists them); ``kernels.count()`` counts what kernels execute
(``kernels/perf/``). ``kernels.attention`` and the other public functions run the ops as ``torch.library`` custom
ops, ``torch.ops.playground.*``, each registered (fake, autograd) in its op folder's ``api.py``, which
``torch.compile`` traces without a graph break.
"""

from ._runtime import INTERPRET, backend, force_config, force_configs  # noqa: F401  (first: sets TRITON_INTERPRET)
# the public ops call the torch.library custom ops (torch.ops.playground.*) each op folder's api.py registers
from .ops.attention.api import attention  # noqa: F401
from .ops.attention.varlen import attention_varlen  # noqa: F401
from .ops.layer_norm.api import layer_norm, rms_norm  # noqa: F401
from .ops.mlp.api import mlp, squared_relu_mlp  # noqa: F401
from .ops.moe.api import moe  # noqa: F401
from .ops.rope.api import partial_rope, partial_rope_qk  # noqa: F401
from .ops.routing.api import topk_routing  # noqa: F401
from .perf import count  # noqa: F401
from .registry import OPS  # noqa: F401
