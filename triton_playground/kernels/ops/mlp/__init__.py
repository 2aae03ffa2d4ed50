"""The transformer MLP, ``act(x @ w_in.T + b_in) @ w_out.T + b_out`` (relu2, relu or gelu_tanh): one Triton GEMM
with a fused epilogue does every matmul, forward and backward. Read ``api.py``, then ``kernel.py``,
``reference.py``, ``spec.py`` (see ``kernels/ops/__init__.py``)."""

from .api import mlp, squared_relu_mlp  # noqa: F401
