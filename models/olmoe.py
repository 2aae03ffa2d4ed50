"""OLMoE (allenai/OLMoE-1B-7B), composed from the playground's kernels.

    x = embed_tokens[ids]
    per layer:  h = input_layernorm(x)                                         # RMSNorm
                q, k, v = q_norm(q_proj(h)), k_norm(k_proj(h)), v_proj(h)      # RMSNorm over the WHOLE projection
                q, k, v = clamp(., -clip_qkv, clip_qkv)                          # when clip_qkv is set
                q, k = rope(q, k)                                                # full head_dim, rotate-half
                x = x + o_proj(attention(q, k, v))                               # GQA when kv heads < heads
                x = x + moe(post_attention_layernorm(x))                         # softmax router, top-k of E experts
    logits = lm_head(norm(x))

MoE: ``probs = softmax(h @ gate.T)``, the top ``num_experts_per_tok`` experts per token (renormalised when
``norm_topk_prob``), each ``down(silu(gate) * up)`` weighted by its prob. Kernels: ``rms_norm``,
``partial_rope_qk``, ``attention``, ``moe``; projections and LM head are ``nn.Linear``.

Experts load from either checkpoint layout: the per-expert ``mlp.experts.{e}.gate_proj/up_proj/down_proj``
(the released checkpoints, and what transformers 5 still writes) or the fused 3-D ``mlp.experts.gate_up_proj``
(gate rows first, then up) and ``mlp.experts.down_proj``; both become the fused tensors ``kernels.moe`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import kernels

from ._common import CausalLM, Checkpoint, RMSNorm, attend, cfg_get, check_activation, heads, load_model
from ._common import merge_heads, positions, rope_setting

ACTIVATIONS = {"silu": "silu"}
STRIP = ("model.",)
IGNORE = ()


@dataclass
class Config:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    inner: int
    experts: int
    top_k: int
    norm_topk_prob: bool
    clip_qkv: float | None
    eps: float
    theta: float
    bias: bool
    tied: bool

    @classmethod
    def from_hf(cls, cfg: dict) -> Config:
        hidden, n_heads = cfg_get(cfg, "hidden_size"), cfg_get(cfg, "num_attention_heads")
        c = cls(
            vocab=cfg_get(cfg, "vocab_size"),
            hidden=hidden,
            layers=cfg_get(cfg, "num_hidden_layers"),
            heads=n_heads,
            kv_heads=cfg_get(cfg, "num_key_value_heads", default=n_heads),
            inner=cfg_get(cfg, "intermediate_size"),
            experts=cfg_get(cfg, "num_experts", "num_local_experts"),
            top_k=cfg_get(cfg, "num_experts_per_tok"),
            norm_topk_prob=cfg_get(cfg, "norm_topk_prob", default=False),
            clip_qkv=cfg_get(cfg, "clip_qkv", default=None),
            eps=cfg_get(cfg, "rms_norm_eps", default=1e-5),
            theta=float(rope_setting(cfg, "rope_theta", 10000.0)),
            bias=cfg_get(cfg, "attention_bias", default=False),
            tied=cfg_get(cfg, "tie_word_embeddings", default=False),
        )
        check_activation(cfg_get(cfg, "hidden_act", default="silu"), ACTIVATIONS)
        if hidden % n_heads or n_heads % c.kv_heads:
            raise ValueError(f"hidden_size ({hidden}) must be divisible by num_attention_heads ({n_heads}), "
                             f"and that by num_key_value_heads ({c.kv_heads})")
        return c


class Attention(nn.Module):
    def __init__(self, c: Config, layer: int):
        super().__init__()
        head_dim = c.hidden // c.heads
        self.q_proj = nn.Linear(c.hidden, c.heads * head_dim, bias=c.bias)
        self.k_proj = nn.Linear(c.hidden, c.kv_heads * head_dim, bias=c.bias)
        self.v_proj = nn.Linear(c.hidden, c.kv_heads * head_dim, bias=c.bias)
        self.o_proj = nn.Linear(c.heads * head_dim, c.hidden, bias=c.bias)
        self.q_norm = RMSNorm(c.heads * head_dim, c.eps)
        self.k_norm = RMSNorm(c.kv_heads * head_dim, c.eps)
        self.layer, self.heads, self.kv_heads = layer, c.heads, c.kv_heads
        self.clip_qkv, self.theta = c.clip_qkv, c.theta

    def forward(self, x, pos, cache, window):
        q, k, v = self.q_norm(self.q_proj(x)), self.k_norm(self.k_proj(x)), self.v_proj(x)
        if self.clip_qkv is not None:
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        q, k = kernels.partial_rope_qk(heads(q, self.heads), heads(k, self.kv_heads), pos, theta=self.theta)
        y = attend(q, k, heads(v, self.kv_heads), cache, self.layer, window)
        return self.o_proj(merge_heads(y))


class Experts(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(c.experts, 2 * c.inner, c.hidden))  # gate rows, then up
        self.down_proj = nn.Parameter(torch.empty(c.experts, c.hidden, c.inner))


class MoE(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.gate = nn.Linear(c.hidden, c.experts, bias=False)  # the router
        self.experts = Experts(c)
        self.top_k, self.norm_topk_prob = c.top_k, c.norm_topk_prob

    def forward(self, x):
        return kernels.moe(x, self.gate.weight, self.experts.gate_up_proj, self.experts.down_proj,
                           k=self.top_k, normalize=self.norm_topk_prob)


class Layer(nn.Module):
    def __init__(self, c: Config, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden, c.eps)
        self.self_attn = Attention(c, layer)
        self.post_attention_layernorm = RMSNorm(c.hidden, c.eps)
        self.mlp = MoE(c)

    def forward(self, x, pos, cache, window):
        x = x + self.self_attn(self.input_layernorm(x), pos, cache, window)
        return x + self.mlp(self.post_attention_layernorm(x))


class OLMoE(CausalLM):
    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab, c.hidden)
        self.layers = nn.ModuleList(Layer(c, layer) for layer in range(c.layers))
        self.norm = RMSNorm(c.hidden, c.eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)
        self.n_layers, self.n_kv_heads, self.head_dim = c.layers, c.kv_heads, c.hidden // c.heads

    def forward(self, input_ids, cache=None):
        self.check_ids(input_ids, cache)
        pos = positions(cache, input_ids.shape[1], input_ids.device)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, pos, cache, self.window)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.lm_head(self.norm(x))


def from_checkpoint(cfg: dict, ckpt: Checkpoint, device) -> OLMoE:
    c = Config.from_hf(cfg)
    with torch.device("meta"):
        model = OLMoE(c)

    def experts(name, shape):
        """The fused expert tensors, as stored or stacked from the per-expert layout."""
        if not name.endswith(("experts.gate_up_proj", "experts.down_proj")) or name in ckpt:
            return None
        prefix = name[: -len("gate_up_proj")] if name.endswith("gate_up_proj") else name[: -len("down_proj")]
        if name.endswith("gate_up_proj"):
            gate = [ckpt.take(f"{prefix}{e}.gate_proj.weight", (c.inner, c.hidden)) for e in range(c.experts)]
            up = [ckpt.take(f"{prefix}{e}.up_proj.weight", (c.inner, c.hidden)) for e in range(c.experts)]
            return torch.cat([torch.stack(gate), torch.stack(up)], dim=1)
        return torch.stack([ckpt.take(f"{prefix}{e}.down_proj.weight", (c.hidden, c.inner))
                            for e in range(c.experts)])

    return load_model(model, ckpt, device, convert=experts, tied="embed_tokens.weight" if c.tied else None)
