"""What the four model files share: reading a checkpoint folder, the KV cache, and greedy generation.

A Hugging Face checkpoint folder holds ``config.json`` and either ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. Loading needs torch and safetensors only: each model file maps the
checkpoint's tensor names onto its own modules with :class:`Checkpoint.take`, which checks every shape against
the config (naming the tensor when it disagrees), and the module tree is built on the ``meta`` device first, so
a multi-GB model is never randomly initialised just to be overwritten.
"""

from __future__ import annotations

import json
import operator
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
    ``window`` (None: the model's own full causal attention). ``from_pretrained`` sets ``eos_token_id`` (a list,
    [] for none) and ``pad_token_id`` from the checkpoint, which :meth:`generate` uses as HF's would.
    """

    max_positions = None
    window = None
    eos_token_id: list[int] = []  # assigned per model by from_pretrained, never mutated
    pad_token_id: int | None = None

    def check_ids(self, input_ids, cache):
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor of token ids (batch, seq), got "
                            f"{type(input_ids).__name__}")
        # nn.Embedding indexes with int64 or int32 only; anything else would fail deep inside it
        if input_ids.dtype not in (torch.long, torch.int32):
            raise TypeError(f"input_ids must hold integer token ids (torch.long or torch.int32), got "
                            f"{input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.numel() == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): give at least one token per row")
        end = input_ids.shape[1] + (cache.length if cache is not None else 0)
        if self.max_positions is not None and end > self.max_positions:
            raise ValueError(f"sequence of {end} tokens is longer than the model's {self.max_positions} positions")

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.n_layers, batch, self.n_kv_heads, max_len, self.head_dim, p.dtype, p.device)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, eos_token_id=None,
                 pad_token_id=None) -> torch.Tensor:
        """Greedy decoding with a KV cache, token for token HF's ``generate(do_sample=False)``.

        Returns the prompt followed by up to ``max_new_tokens`` argmax tokens. A row that emits one of the
        ``eos_token_id`` (an int or a list; None: the checkpoint's; []: none) is finished: it keeps its eos and is
        padded with ``pad_token_id`` (None: the checkpoint's, else the first eos id, as HF falls back) while the
        other rows go on; decoding stops early once every row has finished. There is no attention mask: a prompt is
        taken whole, so (unlike HF, which masks a prompt's pad tokens) rows must not be left-padded.
        """
        if isinstance(max_new_tokens, bool) or not hasattr(type(max_new_tokens), "__index__"):
            raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__} {max_new_tokens!r}")
        max_new_tokens = operator.index(max_new_tokens)  # numpy / 0-d tensor ints too
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        self.check_ids(input_ids, None)
        eos = token_ids(eos_token_id, "eos_token_id") if eos_token_id is not None else self.eos_token_id
        if pad_token_id is None:
            pad_token_id = self.pad_token_id
        elif not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool):
            raise TypeError(f"pad_token_id must be an int or None, got {pad_token_id!r}")
        elif pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a non-negative token id, got {pad_token_id}")
        if pad_token_id is None and eos:
            pad_token_id = eos[0]
        eos_ids = torch.tensor(eos, dtype=input_ids.dtype, device=input_ids.device)

        cache = self.new_cache(input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
        unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        out = [input_ids]
        step = input_ids  # the prompt in one pass (prefill), then one token per step
        for _ in range(max_new_tokens):
            logits = self(step, cache=cache)
            step = logits[:, -1].argmax(-1, keepdim=True).to(input_ids.dtype)
            # a finished row shows pad, but the model is fed its argmax: always inside the vocabulary (a pad id
            # need not be), and finished rows' outputs are never read, while the other rows do not see them
            out.append(torch.where(unfinished[:, None], step, pad_token_id) if eos else step)
            unfinished &= ~torch.isin(step[:, 0], eos_ids)
            if not unfinished.any():
                break
        return torch.cat(out, dim=1)
