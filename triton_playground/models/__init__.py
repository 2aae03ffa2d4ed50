"""GPT-2, OPT, Persimmon and OLMoE composed from the playground's Triton kernels, loaded from HF checkpoints.

    import torch
    from triton_playground import models
    model = models.from_pretrained("path/to/gpt2")             # config.json + model.safetensors (or shards)
    logits = model(input_ids)                                  # (batch, seq, vocab)
    tokens = model.generate(input_ids, max_new_tokens=20)      # greedy, with a KV cache
    sliding = models.from_pretrained("path/to/gpt2", window=256)  # every layer attends to its last 256 keys
    models.patch_hf(hf_model)                                   # a live transformers model, on our kernels
    model.requires_grad_(True)                                  # to train: loaded frozen; every kernel has a backward
    logits = model(packed_ids, cu_seqlens=cu_seqlens)           # packed documents: (1, total) ids, int32 prefix sums

Each family is one file that reads top to bottom (``gpt2.py``, ``opt.py``, ``persimmon.py``, ``olmoe.py``),
registered by one line in ``registry.py``, whose docstring says what a family file provides. What families share
lives once: reading a checkpoint in ``_common.py``; the modules, the KV cache and generation in ``_modules.py``
(sampling and attention masks in ``sampling.py``). ``hf_patch.py`` patches a live Hugging Face model instead.
Loading needs torch and safetensors only.
"""

from __future__ import annotations

import os
import warnings

import torch

from ..kernels import _runtime

from ._common import Checkpoint, load_safetensors, read_config, read_generation_tokens
from .hf_patch import patch_hf
from .registry import FAMILIES, family as _family


def from_pretrained(path, *, dtype=None, device=None, window=None) -> torch.nn.Module:
    """Load a Hugging Face checkpoint folder as one of our models (frozen, eval mode).

    ``dtype``: convert the weights (None keeps the checkpoint's). ``device``: where they go (None: the kernels'
    device, the GPU when there is one). ``window``: every attention layer sees only its last ``window`` keys
    (itself included); None keeps the model's own full causal attention. ``model.generate`` stops at the
    checkpoint's ``eos_token_id`` (from ``generation_config.json``, else ``config.json``), as HF's does.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    _refuse_bfloat16_under_interpreter(dtype, "dtype=torch.bfloat16 was asked for")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        raise ValueError(f"window must be a positive int or None, got {window!r}")
    device = _check_device(device)  # before reading GBs of weights
    cfg = read_config(path)
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"unknown model_type {model_type!r} in {os.path.join(os.fspath(path), 'config.json')}: "
                         f"expected one of {', '.join(FAMILIES)}")
    eos_token_id, pad_token_id = read_generation_tokens(path, cfg)
    family = _family(model_type)
    ckpt = Checkpoint(load_safetensors(path), strip=family.STRIP, ignore=family.IGNORE, dtype=dtype)
    _refuse_bfloat16_under_interpreter(ckpt.dtype, f"the weights in {os.fspath(path)!r} are torch.bfloat16")
    model = family.from_checkpoint(cfg, ckpt, device)
    model.window = window
    model.eos_token_id, model.pad_token_id = eos_token_id, pad_token_id
    model.unused_weights = ckpt.unused  # tensors of the checkpoint that no parameter took
    if model.unused_weights:
        warnings.warn(f"{len(model.unused_weights)} checkpoint tensors were not used: {model.unused_weights[:8]}")
    return model


def _check_device(device) -> torch.device:
    """``device`` as a torch.device (None: the kernels' own); one that this machine lacks is a one-line ValueError
    here, not a CUDA initialisation traceback after the weights were read."""
    if device is None:
        return _runtime.DEVICE
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device: {err}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but torch.cuda.is_available() is False on this machine")
    return resolved


def _refuse_bfloat16_under_interpreter(dtype, what: str) -> None:
    """Without a GPU the kernels run under the Triton interpreter, whose tl.dot reads bfloat16 bits as integers:
    a bf16 model would run and return garbage, so refuse it while loading, where the fix is one argument away."""
    if dtype == torch.bfloat16 and _runtime.INTERPRET:
        raise TypeError(f"{what}, but without a GPU the kernels run under the Triton interpreter, which computes "
                        f"bfloat16 wrong (its tl.dot treats bf16 bits as integers): pass dtype=torch.float32 "
                        f"(or torch.float16) to from_pretrained")


__all__ = ["from_pretrained", "patch_hf", "FAMILIES"]
