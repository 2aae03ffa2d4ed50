"""One folder per op. Each holds the same files, read in this order:

* ``api.py`` — start here: the public function(s) with shapes in the docstring, the argument checks, the launch
  (grid, constexpr flags) and the op's custom ops (``playground::<op>``: fake, autograd, backward op), registered
  once here with ``kernels/_custom_op.py``;
* ``kernel.py`` — the Triton kernels, top to bottom, with the math and the tiling in comments, and each
  kernel's configs (data plus a rule);
* ``reference.py`` — the PyTorch reference with the same signature, the oracle of every test;
* ``spec.py`` — the op's description for tests and sweeps (:class:`kernels.spec.OpSpec`): how to build inputs,
  the hypothesis strategy, FLOPs and bytes, tolerances, peers and bad inputs. It exports ``SPECS``;
* ``peers.py`` — where the op has Triton peers (Liger-Kernel, flash-linear-attention): their adapters.

``kernels/registry.py`` lists the folders.
"""
