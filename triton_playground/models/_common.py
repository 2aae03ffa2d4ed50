"""What the model families share to load a checkpoint: reading its config and its weights.

A Hugging Face checkpoint folder holds ``config.json`` and either ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. Loading needs torch and safetensors only: each model file maps the
checkpoint's tensor names onto its own modules with :class:`Checkpoint.take`, which checks every shape against
the config (naming the tensor when it disagrees), and the module tree is built on the ``meta`` device first, so
a multi-GB model is never randomly initialised just to be overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os

import torch
from torch import nn

_REQUIRED = object()


# --------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DecoderConfig:
    """The sizes every family's ``Config`` holds (a dataclass subclass adding its own fields, read from
    ``config.json`` by its ``from_hf``); :func:`load_model` and :class:`_modules.RotaryLM` read them."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    inner: int  # the MLP's (one expert's) inner size
    tied: bool  # lm_head.weight is the input embedding


def read_config(path) -> dict:
    """``config.json`` of a checkpoint folder, as a dict. A missing folder or file is a FileNotFoundError."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder not found: {path!r}")
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json in checkpoint folder {path!r}")
    with open(file) as f:
        return json.load(f)


def token_ids(value, name: str) -> list[int]:
    """An ``eos_token_id`` as HF allows it (None, one int, or a list of ints) as a list of ints ([] for None)."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    values = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{name} must be an int, a list of ints, or None, got {value!r}")
    if any(v < 0 for v in values):
        raise ValueError(f"{name} must be non-negative token ids, got {value!r}")
    return list(values)


def read_generation_tokens(path, cfg: dict) -> tuple[list[int], int | None]:
    """``(eos_token_id as a list, pad_token_id)`` as HF's ``generate`` would take them from a checkpoint folder.

    HF reads ``generation_config.json`` when the folder has one (Llama-3-style checkpoints list several eos ids
    there but one in config.json), so a key set there wins; config.json fills in the keys it lacks.
    """
    generation = {}
    file = os.path.join(os.fspath(path), "generation_config.json")
    if os.path.isfile(file):
        with open(file) as f:
            generation = json.load(f)

    def setting(key):
        return generation[key] if key in generation else cfg.get(key)

    pad = setting("pad_token_id")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool)):
        raise TypeError(f"pad_token_id in {file if 'pad_token_id' in generation else 'config.json'} must be an "
                        f"int or null, got {pad!r}")
    return token_ids(setting("eos_token_id"), "eos_token_id"), pad


def cfg_get(cfg: dict, *keys, default=_REQUIRED):
    """The first of ``keys`` that ``cfg`` sets to something other than None (real configs spell keys several ways:
    GPT-2 writes ``n_embd`` where newer files write ``hidden_size``)."""
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    if default is _REQUIRED:
        raise ValueError(f"config.json of model_type {cfg.get('model_type')!r} lacks {' / '.join(keys)}")
    return default


def attention_shape(cfg: dict, hidden=("hidden_size",), heads=("num_attention_heads",), kv_heads=None):
    """``(hidden size, heads, kv heads)`` read under the given config keys (``kv_heads`` None: as many as heads),
    hidden divisible by heads and heads by kv heads; the error names the config's keys."""
    sizes = [(hidden[0], cfg_get(cfg, *hidden)), (heads[0], cfg_get(cfg, *heads))]
    sizes.append((kv_heads[0], cfg_get(cfg, *kv_heads, default=sizes[1][1])) if kv_heads else sizes[1])
    for (key, size), (by_key, by) in zip(sizes, sizes[1:]):
        if size % by:
            raise ValueError(f"{key} ({size}) must be divisible by {by_key} ({by})")
    return tuple(size for _, size in sizes)


def rope_setting(cfg: dict, key: str, default):
    """A RoPE setting (``rope_theta``, ``partial_rotary_factor``) from ``rope_parameters`` (transformers >= 5),
    ``rope_scaling`` or the top level (older files). Only the plain ("default") RoPE is supported."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise NotImplementedError(f"rope_type {rope_type!r} is not supported (only 'default' RoPE)")
    if params.get(key) is not None:
        return params[key]
    return cfg.get(key) if cfg.get(key) is not None else default


def check_activation(name: str, supported: dict) -> str:
    """The kernels.mlp activation for a config's ``hidden_act``/``activation_function`` name."""
    if name not in supported:
        raise NotImplementedError(f"activation {name!r} is not supported (expected one of {sorted(supported)})")
    return supported[name]


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------


def load_safetensors_file(file: str) -> dict[str, torch.Tensor]:
    """The tensors of one ``.safetensors`` file; a truncated or corrupt file is an OSError that names it.

    safetensors' own error says only what broke ("incomplete metadata, file not fully covered"), not which file,
    and a sharded checkpoint has many: an interrupted download is then found by its name.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(file)
    except SafetensorError as err:
        raise OSError(f"cannot read {file!r} (truncated or corrupt safetensors file?): {err}") from err


def load_safetensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's ``model.safetensors``, or of all shards its index lists (on the CPU)."""
    path = os.fspath(path)
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return load_safetensors_file(single)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            file = os.path.join(path, shard)
            if not os.path.isfile(file):
                raise FileNotFoundError(f"shard {shard!r} listed in model.safetensors.index.json is missing "
                                        f"in {path!r}")
            tensors.update(load_safetensors_file(file))
        return tensors
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path!r}")


class Checkpoint:
    """The tensors of a checkpoint, taken one by one by name with their expected shape.

    ``strip``: name prefixes dropped on the way in, so both spellings real checkpoints use load (GPT-2's original
    files say ``h.0.attn...`` where ``save_pretrained`` writes ``transformer.h.0.attn...``). Tensors that nobody
    takes are listed in :attr:`unused` (buffers such as GPT-2's ``attn.bias`` mask are ignored).
    """

    def __init__(self, tensors: dict, *, strip=(), ignore=(), dtype=None):
        self.tensors = {}
        for name, t in tensors.items():
            for prefix in strip:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    break
            if not any(name.endswith(suffix) for suffix in ignore):
                self.tensors[name] = t
        # dtype None keeps the checkpoint's own (that of its first floating tensor)
        floats = [t.dtype for t in self.tensors.values() if t.is_floating_point()]
        self.dtype = dtype if dtype is not None else (floats[0] if floats else torch.float32)

    def __contains__(self, name):
        return name in self.tensors

    def take(self, name: str, shape) -> torch.Tensor:
        if name not in self.tensors:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        t = self.tensors.pop(name)
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)} but the config implies {tuple(shape)}")
        return t.to(self.dtype)

    @property
    def unused(self) -> list[str]:
        return sorted(self.tensors)


def load_model(model_class, c: DecoderConfig, ckpt: Checkpoint, device, *, convert=None,
               embedding="embed_tokens.weight") -> nn.Module:
    """``model_class(c)`` built on ``meta`` (nothing initialised), filled from ``ckpt`` on ``device``, frozen, in
    eval mode.

    Every parameter is taken under its own name with its own shape (so the config decides what is expected);
    ``convert(name, shape)`` may return it instead, read some other way (a transposed Conv1D, stacked experts),
    or None for the plain take. When the config says ``c.tied``, ``lm_head.weight`` is the input ``embedding``.
    """
    with torch.device("meta"):
        model = model_class(c)
    tied = embedding if c.tied else None
    state = {}
    for name, p in model.named_parameters():
        if name == "lm_head.weight" and tied:
            continue
        t = convert(name, tuple(p.shape)) if convert is not None else None
        state[name] = ckpt.take(name, p.shape) if t is None else t
    state = {name: t.to(device) for name, t in state.items()}
    if tied:
        ckpt.tensors.pop("lm_head.weight", None)  # some tied checkpoints store the copy too
        state["lm_head.weight"] = state[tied]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.lm_head.weight = model.get_parameter(tied)  # one Parameter under both names
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
