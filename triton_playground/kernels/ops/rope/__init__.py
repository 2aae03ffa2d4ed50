"""Partial rotary position embedding (RoPE), GPT-NeoX "rotate half", as HF Persimmon and OLMoE use it.
Read ``api.py``, then ``kernel.py``, ``reference.py``, ``spec.py`` (see ``kernels/ops/__init__.py``)."""

from .api import partial_rope, partial_rope_qk  # noqa: F401
