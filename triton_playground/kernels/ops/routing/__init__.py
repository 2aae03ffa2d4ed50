"""Top-k expert routing (HF OLMoE's router): softmax over the experts, the k most probable, forward and backward.
Read ``api.py``, then ``kernel.py``, ``reference.py``, ``spec.py`` (see ``kernels/ops/__init__.py``). The
softmax + top-k selection both kernels use, shared with the MoE router, is ``kernels/common/topk.py``."""

from .api import topk_routing  # noqa: F401
