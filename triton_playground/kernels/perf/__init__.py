"""Performance evidence that needs no GPU.

* :mod:`.counters` — what kernels really execute, counted as they run: the FLOPs of every ``tl.dot`` and the
  bytes of every global load and store of a Triton kernel under the interpreter (ours or anyone's, the same
  way), and the same quantities for PyTorch code at the aten level.
* :mod:`.model` — a model of an H100 (SXM, NVL, PCIe) running those counts: each launch's device time (compute,
  HBM after L2, the programs' own pace), the host's time to issue it, and the timeline of both as
  ``triton.testing.do_bench`` times a call; checked against published H100 measurements (``triton-playground
  validate``, ``triton_playground/validation``).
"""

from .counters import Counter, Launch, count  # noqa: F401
