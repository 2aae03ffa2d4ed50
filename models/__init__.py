"""GPT-2, OPT, Persimmon and OLMoE composed from the playground's Triton kernels, loaded from HF checkpoints.

    import models, torch
    model = models.from_pretrained("path/to/gpt2")             # config.json + model.safetensors (or shards)
    logits = model(input_ids)                                  # (batch, seq, vocab)
    tokens = model.generate(input_ids, max_new_tokens=20)      # greedy, with a KV cache
    sliding = models.from_pretrained("path/to/gpt2", window=256)  # every layer attends to its last 256 keys

Each family is one file that reads top to bottom (``gpt2.py``, ``opt.py``, ``persimmon.py``, ``olmoe.py``);
loading, the KV cache and generation live once in ``_common.py``. Loading needs torch and safetensors only.
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch

from ._common import Checkpoint, load_safetensors, read_config

FAMILIES = ("gpt2", "opt", "persimmon", "olmoe")  # model_type -> the module models/<model_type>.py


def from_pretrained(path, *, dtype=None, device=None, window=None) -> torch.nn.Module:
    """Load a Hugging Face checkpoint folder as one of our models (frozen, eval mode).

    ``dtype``: convert the weights (None keeps the checkpoint's). ``device``: where they go (None: the kernels'
    device, the GPU when there is one). ``window``: every attention layer sees only its last ``window`` keys
    (itself included); None keeps the model's own full causal attention.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        raise ValueError(f"window must be a positive int or None, got {window!r}")
    cfg = read_config(path)
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"unknown model_type {model_type!r} in {os.path.join(os.fspath(path), 'config.json')}: "
                         f"expected one of {', '.join(FAMILIES)}")
    if device is None:
        from kernels._runtime import DEVICE as device
    family = importlib.import_module(f"{__name__}.{model_type}")
    ckpt = Checkpoint(load_safetensors(path), strip=family.STRIP, ignore=family.IGNORE, dtype=dtype)
    model = family.from_checkpoint(cfg, ckpt, torch.device(device))
    model.window = window
    model.unused_weights = ckpt.unused  # tensors of the checkpoint that no parameter took
    if model.unused_weights:
        warnings.warn(f"{len(model.unused_weights)} checkpoint tensors were not used: {model.unused_weights[:8]}")
    return model


__all__ = ["from_pretrained", "FAMILIES"]
