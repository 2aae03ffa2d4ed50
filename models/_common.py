"""What the four model files share: reading a checkpoint folder, the KV cache, and greedy generation.

A Hugging Face checkpoint folder holds ``config.json`` and either ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. Loading needs torch and safetensors only: each model file maps the
checkpoint's tensor names onto its own modules with :class:`Checkpoint.take`, which checks every shape against
the config (naming the tensor when it disagrees), and the module tree is built on the ``meta`` device first, so
a multi-GB model is never randomly initialised just to be overwritten.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

import kernels

_REQUIRED = object()


# --------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------


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


def cfg_get(cfg: dict, *keys, default=_REQUIRED):
    """The first of ``keys`` that ``cfg`` sets to something other than None (real configs spell keys several ways:
    GPT-2 writes ``n_embd`` where newer files write ``hidden_size``)."""
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    if default is _REQUIRED:
        raise ValueError(f"config.json of model_type {cfg.get('model_type')!r} lacks {' / '.join(keys)}")
    return default


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


def load_safetensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's ``model.safetensors``, or of all shards its index lists (on the CPU)."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return load_file(single)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            file = os.path.join(path, shard)
            if not os.path.isfile(file):
                raise FileNotFoundError(f"shard {shard!r} listed in model.safetensors.index.json is missing "
                                        f"in {path!r}")
            tensors.update(load_file(file))
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


def load_model(model: nn.Module, ckpt: Checkpoint, device, *, convert=None, tied=None) -> nn.Module:
    """Fill ``model`` (built on ``meta`` from the config) from ``ckpt``, on ``device``, frozen, in eval mode.

    Every parameter is taken under its own name with its own shape (so the config decides what is expected);
    ``convert(name, shape)`` may return it instead, read some other way (a transposed Conv1D, stacked experts),
    or None for the plain take. ``tied``: the name of the input embedding that ``lm_head.weight`` shares.
    """
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


# --------------------------------------------------------------------------------------------------------------
# Pieces every model uses
# --------------------------------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """A LayerNorm whose forward is ``kernels.layer_norm`` (weight/bias None when the checkpoint has none)."""

    def __init__(self, dim, eps=1e-5, affine=True, bias=True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim)) if affine else None
        self.bias = nn.Parameter(torch.empty(dim)) if affine and bias else None

    def forward(self, x):
        return kernels.layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """HF OLMoE's RMSNorm (``weight * normalised x rounded to x's dtype``), forward by ``kernels.rms_norm``."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x):
        return kernels.rms_norm(x, self.weight, self.eps)


def heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(batch, seq, n_heads * head_dim) -> (batch, n_heads, seq, head_dim), a view (the kernels take strides)."""
    b, s, _ = x.shape
    return x.view(b, s, n_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, n_heads, seq, head_dim) -> (batch, seq, n_heads * head_dim)."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


class KVCache:
    """Keys and values of every layer, preallocated for ``max_len`` positions.

    ``update(layer, k, v)`` writes the new positions after the ``length`` already held and returns views of all
    positions so far: the attention kernel takes them with ``q_len < kv_len`` (queries are the last positions).
    The model calls ``advance(n)`` once all its layers have seen the ``n`` new positions.
    """

    def __init__(self, n_layers, batch, n_kv_heads, max_len, head_dim, dtype, device):
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n


def attend(q, k, v, cache: KVCache | None, layer: int, window, scale=None):
    """Causal attention of the new positions' queries over the cached + new keys (one kernel launch)."""
    if cache is not None:
        k, v = cache.update(layer, k, v)
    return kernels.attention(q, k, v, causal=True, window=window, scale=scale)


def positions(cache: KVCache | None, seq: int, device) -> torch.Tensor:
    """Absolute positions of ``seq`` new tokens: after whatever the cache already holds."""
    start = cache.length if cache is not None else 0
    return torch.arange(start, start + seq, device=device)


class CausalLM(nn.Module):
    """Base of the four models: ``forward(input_ids, cache=None) -> logits`` and greedy :meth:`generate`.

    Subclasses set ``n_layers``, ``n_kv_heads``, ``head_dim``, ``max_positions`` (None: unbounded) and
    ``window`` (None: the model's own full causal attention).
    """

    max_positions = None
    window = None

    def check_ids(self, input_ids, cache):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise ValueError(f"input_ids must be an integer tensor (batch, seq), got "
                             f"{getattr(input_ids, 'shape', type(input_ids).__name__)}")
        end = input_ids.shape[1] + (cache.length if cache is not None else 0)
        if self.max_positions is not None and end > self.max_positions:
            raise ValueError(f"sequence of {end} tokens is longer than the model's {self.max_positions} positions")

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.n_layers, batch, self.n_kv_heads, max_len, self.head_dim, p.dtype, p.device)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding with a KV cache: the prompt, then ``max_new_tokens`` argmax tokens."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        self.check_ids(input_ids, None)
        cache = self.new_cache(input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
        out = [input_ids]
        step = input_ids  # the prompt in one pass (prefill), then one token per step
        for _ in range(max_new_tokens):
            logits = self(step, cache=cache)
            step = logits[:, -1].argmax(-1, keepdim=True).to(input_ids.dtype)
            out.append(step)
        return torch.cat(out, dim=1)
