"""Performance evidence that needs no GPU.

* :mod:`.counters` — what kernels really execute, counted as they run: the FLOPs of every ``tl.dot`` and the
  bytes of every global load and store of a Triton kernel under the interpreter (ours or anyone's, the same
  way), and the same quantities for PyTorch code at the aten level.
* :mod:`.h100` — a roofline model of an H100 SXM built from those counts: an attainable bound, not a
  prediction.
"""

from .counters import Counter, Launch, count  # noqa: F401
