"""What several ops share, kept once: the ``@triton.jit`` tiling helpers (:mod:`.tiling`) and the dot-precision
rule (:mod:`.precision`). The runtime (backend, autotuning, output allocation, argument checks) is
``kernels/_runtime.py``; the op description type is ``kernels/spec.py``."""
