"""LayerNorm and RMSNorm over the last dimension. Read ``api.py``, then ``kernel.py``, ``reference.py``,
``spec.py`` (see ``kernels/ops/__init__.py``)."""

from .api import layer_norm, rms_norm  # noqa: F401
