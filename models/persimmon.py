"""Persimmon (adept/persimmon-8b), composed from the playground's kernels.

    x = embed_tokens[ids]
    per layer:  q, k, v = split(query_key_value(input_layernorm(x)))   # fused, per head: q, k, v interleaved
                q, k = q_layernorm(q), k_layernorm(k)                  # LayerNorm over head_dim (qk_layernorm)
                q, k = rope(q, k) on the first head_dim * partial_rotary_factor channels (GPT-NeoX rotate-half)
                x = x + dense(attention(q, k, v))
                x = x + mlp(post_attention_layernorm(x))                # relu(.)^2
    logits = lm_head(final_layernorm(x))                                # untied

Kernels: ``layer_norm`` (the two per-layer norms, q/k norms, final norm), ``partial_rope_qk`` (q and k in one
launch), ``attention``, ``mlp(activation="relu2")``. The fused ``query_key_value`` stays as the checkpoint
stores it: its output viewed as (batch, seq, heads, 3, head_dim) gives q, k and v as strided views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import kernels

from ._common import CausalLM, Checkpoint, LayerNorm, attend, cfg_get, check_activation, load_model, merge_heads
from ._common import positions, rope_setting

ACTIVATIONS = {"relu2": "relu2"}
STRIP = ("model.",)
IGNORE = ()


@dataclass
class Config:
    vocab: int
    hidden: int
    layers: int
    heads: int
    inner: int
    eps: float
    qk_layernorm: bool
    rotary_dim: int
    theta: float
    activation: str
    tied: bool

    @classmethod
    def from_hf(cls, cfg: dict) -> Config:
        hidden, n_heads = cfg_get(cfg, "hidden_size"), cfg_get(cfg, "num_attention_heads")
        if hidden % n_heads:
            raise ValueError(f"hidden_size ({hidden}) must be divisible by num_attention_heads ({n_heads})")
        return cls(
            vocab=cfg_get(cfg, "vocab_size"),
            hidden=hidden,
            layers=cfg_get(cfg, "num_hidden_layers"),
            heads=n_heads,
            inner=cfg_get(cfg, "intermediate_size"),
            eps=cfg_get(cfg, "layer_norm_eps", default=1e-5),
            qk_layernorm=cfg_get(cfg, "qk_layernorm", default=True),
            rotary_dim=int(hidden // n_heads * rope_setting(cfg, "partial_rotary_factor", 0.5)),
            theta=float(rope_setting(cfg, "rope_theta", 10000.0)),
            activation=check_activation(cfg_get(cfg, "hidden_act", default="relu2"), ACTIVATIONS),
            tied=cfg_get(cfg, "tie_word_embeddings", default=False),
        )


class Attention(nn.Module):
    def __init__(self, c: Config, layer: int):
        super().__init__()
        head_dim = c.hidden // c.heads
        self.query_key_value = nn.Linear(c.hidden, 3 * c.hidden)
        self.dense = nn.Linear(c.hidden, c.hidden)
        if c.qk_layernorm:
            self.q_layernorm = LayerNorm(head_dim, c.eps)
            self.k_layernorm = LayerNorm(head_dim, c.eps)
        self.layer, self.heads, self.qk_layernorm = layer, c.heads, c.qk_layernorm
        self.rotary_dim, self.theta = c.rotary_dim, c.theta

    def forward(self, x, pos, cache, window):
        b, s, _ = x.shape
        q, k, v = self.query_key_value(x).view(b, s, self.heads, 3, -1).unbind(3)  # (b, s, heads, head_dim)
        if self.qk_layernorm:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (b, heads, s, head_dim)
        q, k = kernels.partial_rope_qk(q, k, pos, rotary_dim=self.rotary_dim, theta=self.theta)
        return self.dense(merge_heads(attend(q, k, v, cache, self.layer, window)))


class MLP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(c.hidden, c.inner)
        self.dense_4h_to_h = nn.Linear(c.inner, c.hidden)
        self.activation = c.activation

    def forward(self, x):
        return kernels.mlp(x, self.dense_h_to_4h.weight, self.dense_h_to_4h.bias,
                           self.dense_4h_to_h.weight, self.dense_4h_to_h.bias, activation=self.activation)


class Layer(nn.Module):
    def __init__(self, c: Config, layer: int):
        super().__init__()
        self.input_layernorm = LayerNorm(c.hidden, c.eps)
        self.self_attn = Attention(c, layer)
        self.post_attention_layernorm = LayerNorm(c.hidden, c.eps)
        self.mlp = MLP(c)

    def forward(self, x, pos, cache, window):
        x = x + self.self_attn(self.input_layernorm(x), pos, cache, window)
        return x + self.mlp(self.post_attention_layernorm(x))


class Persimmon(CausalLM):
    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab, c.hidden)
        self.layers = nn.ModuleList(Layer(c, layer) for layer in range(c.layers))
        self.final_layernorm = LayerNorm(c.hidden, c.eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)
        self.n_layers, self.n_kv_heads, self.head_dim = c.layers, c.heads, c.hidden // c.heads

    def forward(self, input_ids, cache=None):
        self.check_ids(input_ids, cache)
        pos = positions(cache, input_ids.shape[1], input_ids.device)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, pos, cache, self.window)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.lm_head(self.final_layernorm(x))


def from_checkpoint(cfg: dict, ckpt: Checkpoint, device) -> Persimmon:
    c = Config.from_hf(cfg)
    with torch.device("meta"):
        model = Persimmon(c)
    return load_model(model, ckpt, device, tied="embed_tokens.weight" if c.tied else None)
