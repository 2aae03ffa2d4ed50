"""The PyTorch reference of the MLP (same signature as ``api.py``'s ``mlp``): eager linear, activation, linear."""

import math

import torch

from .kernel import ACTIVATIONS


def _reference_activation(h, activation):
    if activation == "relu":
        return torch.relu(h)
    if activation == "relu2":  # transformers' ReLUSquaredActivation
        return torch.square(torch.relu(h))
    if activation == "gelu_tanh":  # transformers' NewGELUActivation (GPT-2's gelu_new)
        return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")


def mlp_reference(x, w_in, b_in, w_out, b_out, *, activation="relu2"):
    """Eager PyTorch: linear, activation (relu, square, ...), linear."""
    h = torch.nn.functional.linear(x, w_in, b_in)
    return torch.nn.functional.linear(_reference_activation(h, activation), w_out, b_out)
