"""``patch_hf``: run a live Hugging Face model's forward on the playground's kernels, in place.

    model = transformers.AutoModelForCausalLM.from_pretrained("gpt2", torch_dtype=torch.float32)
    models.patch_hf(model, window=256)      # attention, norms, MLP (and OLMoE's MoE) now run our kernels
    model.generate(ids, max_new_tokens=20)  # HF's own generate, config, weights and state dict, unchanged

Supported: ``GPT2LMHeadModel``, ``OPTForCausalLM``, ``PersimmonForCausalLM``, ``OlmoeForCausalLM`` and their base
models (``GPT2Model``, ``OPTModel``, ``PersimmonModel``, ``OlmoeModel``). What each part replaces:

- ``norm``: every ``nn.LayerNorm`` over the last dim (GPT-2, OPT, Persimmon, Persimmon's q/k norms) by
  ``kernels.layer_norm``; ``OlmoeRMSNorm`` (also OLMoE's q/k norms) by ``kernels.rms_norm``.
- ``mlp``: ``GPT2MLP``, ``PersimmonMLP`` and OPT's ``fc1 -> act -> fc2`` (inside ``OPTDecoderLayer``, whose forward
  is HF's with that one change) by one ``kernels.mlp`` call (gelu_tanh / relu2 / relu). OLMoE has no dense MLP.
- ``moe``: ``OlmoeSparseMoeBlock`` by ``kernels.moe``. That kernel has no backward yet, so while a gradient is
  needed the block runs HF's own forward (inference runs ours).
- ``attention``: the attention of every self-attention layer by ``kernels.attention`` (causal, GQA, ``window=W``:
  the last W keys, itself included, in every layer). The projections, RoPE (HF's ``apply_rotary_pos_emb`` on the
  cos/sin the model hands its layers) and the KV cache stay HF's. Our kernel knows causal and sliding-window masks
  only, so a call whose mask hides anything else (left padding, a custom 4-D mask), dropout in training mode, or
  cross-attention falls back to the model's own attention implementation (``sdpa``/``eager``/...) for that call,
  with the window added to the mask when ``window`` is set. See :func:`_plain_causal` for how a mask is judged.

How, in place: each patched module's class is swapped for a subclass of it whose ``forward`` calls our kernels
(``type(module).__name__`` gains a ``Playground`` prefix; isinstance still holds); no parameter, buffer or config
value changes. Attention modules get a view of the model's config (every attribute the config's, read and written
through) whose ``_attn_implementation`` is ``"playground"``, the name our attention function is registered under
in HF's ``AttentionInterface``; the model's own config, and so its masks, stay as they were. Whole-model pickling
(``torch.save(model)``) cannot name the generated classes: save the state dict, which is unchanged.
"""

from __future__ import annotations

import sys
import weakref

import torch
from torch import nn

from triton_playground import kernels

SUPPORTED = ("GPT2LMHeadModel", "GPT2Model", "OPTForCausalLM", "OPTModel", "PersimmonForCausalLM", "PersimmonModel",
             "OlmoeForCausalLM", "OlmoeModel")
ATTENTION = ("GPT2Attention", "OPTAttention", "PersimmonAttention", "OlmoeAttention")
MLP_ACTIVATION = {"gpt2": ("activation_function", {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                                                   "gelu_fast": "gelu_tanh"}),
                  "opt": ("activation_function", {"relu": "relu"}),
                  "persimmon": ("hidden_act", {"relu2": "relu2"})}
NAME = "playground"  # our entry in transformers' AttentionInterface


def patch_hf(model: nn.Module, *, attention=True, norm=True, mlp=True, moe=True, window=None) -> nn.Module:
    """Make ``model`` (an instantiated HF GPT-2 / OPT / Persimmon / OLMoE, causal LM or base model) run its forward
    on our kernels for the chosen parts, in place; returns it. ``window=W`` (needs ``attention``): every attention
    layer sees its last W keys, itself included. Patching again re-applies with the new choices' window."""
    import transformers

    kinds = tuple(getattr(transformers, name) for name in SUPPORTED)
    if not isinstance(model, kinds):
        raise TypeError(f"patch_hf supports {', '.join(SUPPORTED)} (and subclasses); got {type(model).__name__}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be a positive int or None, got {window!r}")
    if window is not None and not attention:
        raise ValueError("window=... needs attention=True (the window is applied by our attention kernel)")
    config = model.config
    activation = None
    if mlp and config.model_type in MLP_ACTIVATION:
        key, supported = MLP_ACTIVATION[config.model_type]
        activation = supported.get(getattr(config, key))
        if activation is None:
            raise NotImplementedError(f"{key}={getattr(config, key)!r} has no kernels.mlp activation (supported: "
                                      f"{sorted(supported)}); pass mlp=False to keep HF's MLP")
    if moe and config.model_type == "olmoe" and config.hidden_act != "silu":
        raise NotImplementedError(f"kernels.moe computes SwiGLU experts; hidden_act={config.hidden_act!r}: "
                                  f"pass moe=False")
    transformers.AttentionInterface.register(NAME, _attention)
    for module in model.modules():
        kind = type(module).__name__.removeprefix("Playground")
        if norm and isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
            _swap(module, _LayerNorm)
        elif norm and kind == "OlmoeRMSNorm":
            _swap(module, _RMSNorm)
        elif activation and kind in ("GPT2MLP", "PersimmonMLP", "OPTDecoderLayer"):
            _swap(module, _OPTLayer if kind == "OPTDecoderLayer" else _GPT2MLP if kind == "GPT2MLP" else _DenseMLP)
            module.playground_activation = activation
        elif moe and kind == "OlmoeSparseMoeBlock":
            _swap(module, _MoE)
        elif attention and kind in ATTENTION and not getattr(module, "is_cross_attention", False):
            if not isinstance(module.config, _AttentionConfig):
                module.config = _AttentionConfig(module.config)
            module.playground_window = window
    return model


_CLASSES: dict[tuple[type, type], type] = {}


def _swap(module: nn.Module, patch: type) -> None:
    """Make ``module`` an instance of ``Playground<its class>``: ``patch``'s forward over the HF class."""
    hf_class = getattr(type(module), "hf_class", type(module))  # patched before: the class it was made from
    key = (patch, hf_class)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"Playground{hf_class.__name__}", (patch, hf_class),
                             {"__module__": __name__, "hf_class": hf_class})
    module.__class__ = _CLASSES[key]


# ------------------------------------------------------------------------------------------------ norms and MLPs


class _LayerNorm:
    def forward(self, x):
        return kernels.layer_norm(x, self.weight, self.bias, self.eps)


class _RMSNorm:
    def forward(self, x):
        return kernels.rms_norm(x, self.weight, self.variance_epsilon)


class _GPT2MLP:
    def forward(self, x):  # Conv1D holds (in, out): its transpose is nn.Linear's (out, in), a view
        y = kernels.mlp(x, self.c_fc.weight.t(), self.c_fc.bias, self.c_proj.weight.t(), self.c_proj.bias,
                        activation=self.playground_activation)
        return self.dropout(y)


class _DenseMLP:  # Persimmon
    def forward(self, x):
        return kernels.mlp(x, self.dense_h_to_4h.weight, self.dense_h_to_4h.bias, self.dense_4h_to_h.weight,
                           self.dense_4h_to_h.bias, activation=self.playground_activation)


class _OPTLayer:
    """HF's ``OPTDecoderLayer.forward`` with ``fc2(act(fc1(x)))`` as one ``kernels.mlp`` call."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        kwargs.pop("use_cache", None)
        residual = hidden_states
        if self.do_layer_norm_before:  # 125m, 1.3b, ...: pre-LN
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, _ = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask, **kwargs)
        hidden_states = residual + nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
        if not self.do_layer_norm_before:  # 350m: post-LN
            hidden_states = self.self_attn_layer_norm(hidden_states)
        residual = hidden_states
        if self.do_layer_norm_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = kernels.mlp(hidden_states, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                                    activation=self.playground_activation)
        hidden_states = residual + nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
        if not self.do_layer_norm_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states


class _MoE:
    """OLMoE's sparse MoE block by ``kernels.moe``; HF's own forward while a gradient is needed (no backward yet)."""

    def forward(self, hidden_states):
        weights = (self.gate.weight, self.experts.gate_up_proj, self.experts.down_proj)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (hidden_states, *weights)):
            return super().forward(hidden_states)
        return kernels.moe(hidden_states, *weights, k=self.gate.top_k, normalize=self.gate.norm_topk_prob)


# ------------------------------------------------------------------------------------------------ attention


class _AttentionConfig:
    """The model's config as a patched attention layer sees it: every attribute is the config's (read and written
    through), except ``_attn_implementation``, which names our function in HF's ``AttentionInterface``."""

    _attn_implementation = NAME

    def __init__(self, config):
        object.__setattr__(self, "model_config", config)

    def __getattr__(self, name):
        if name == "model_config":  # not set yet (copy/pickle build the object without __init__)
            raise AttributeError(name)
        return getattr(self.model_config, name)

    def __setattr__(self, name, value):
        setattr(self.model_config, name, value)


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None, **kwargs):
    """HF's attention-function interface: ``query (batch, heads, q_len, head_dim)``, ``key, value (batch, kv_heads,
    kv_len, head_dim)`` (the cache included), ``attention_mask`` as the model's own implementation builds it;
    returns ``(out (batch, q_len, heads, head_dim), None)``."""
    window = module.playground_window
    if sliding_window is not None:
        window = sliding_window if window is None else min(window, sliding_window)
    q_len, kv_len = query.shape[2], key.shape[2]
    if (getattr(module, "is_causal", True) and not (module.training and dropout > 0)
            and (attention_mask is None or _plain_causal(attention_mask, q_len, kv_len))):
        out = kernels.attention(query, key, value, causal=True, window=window, scale=scaling)
        return out.transpose(1, 2), None
    # the model's own implementation, on a mask that also holds the window
    implementation = module.config.model_config._attn_implementation
    if window is not None:
        if implementation not in ("eager", "sdpa"):
            raise NotImplementedError(f"patch_hf(window=...) with a padding mask needs the model's attention to be "
                                      f"'eager' or 'sdpa', not {implementation!r}")
        attention_mask = _windowed(attention_mask, window, q_len, kv_len, query)
    import transformers

    eager = sys.modules[type(module).__module__].eager_attention_forward
    fallback = transformers.AttentionInterface().get_interface(implementation, eager)
    return fallback(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                    sliding_window=sliding_window, **kwargs)


def _causal_band(q_len, kv_len, device, window=None):
    """(q_len, kv_len) bool, True where query ``i`` (at position ``kv_len - q_len + i``) sees key ``j``."""
    i = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    j = torch.arange(kv_len, device=device)[None, :]
    return (j <= i) & (j > i - window) if window is not None else j <= i


_last_judged: list = [None, False]  # (weakref to the last mask judged, its verdict): every layer gets the same mask


def _plain_causal(mask, q_len, kv_len) -> bool:
    """Whether a 4-D mask ``(batch, 1, q_len, kv_len)`` (bool: True = attend; float: 0 = attend, additive) shows each
    query exactly its causal keys, nothing more or less: then our causal kernel computes what the mask asks. Read once
    per mask object (a host sync), not once per layer."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or tuple(mask.shape[-2:]) != (q_len, kv_len):
        return False
    ref, verdict = _last_judged
    if ref is not None and ref() is mask:
        return verdict
    visible = mask if mask.dtype == torch.bool else mask == 0
    verdict = torch.equal(visible, _causal_band(q_len, kv_len, mask.device).expand_as(visible))
    _last_judged[:] = [weakref.ref(mask), verdict]
    return verdict


def _windowed(mask, window, q_len, kv_len, query):
    """``mask`` (None, bool or additive float) with the keys outside the window hidden as well."""
    band = _causal_band(q_len, kv_len, query.device, window)
    if mask is None:
        mask = torch.zeros(q_len, kv_len, dtype=query.dtype, device=query.device)[None, None]
    if mask.dtype == torch.bool:
        return mask & band
    return mask.masked_fill(~band, torch.finfo(mask.dtype).min)
