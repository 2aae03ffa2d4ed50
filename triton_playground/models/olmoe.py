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

from triton_playground import kernels

from ._common import Checkpoint, DecoderConfig, attention_shape, cfg_get, check_activation, load_model, rope_setting
from ._modules import PreNormLayer, RMSNorm, RotaryLM, attend, heads, merge_heads
from .registry import TinyCase

ACTIVATIONS = {"silu": "silu"}
STRIP = ("model.",)
IGNORE = ()


@dataclass
class Config(DecoderConfig):
    kv_heads: int
    experts: int
    top_k: int
    norm_topk_prob: bool
    clip_qkv: float | None
    eps: float
    theta: float
    bias: bool

    @classmethod
    def from_hf(cls, cfg: dict) -> Config:
        hidden, n_heads, kv_heads = attention_shape(cfg, kv_heads=("num_key_value_heads",))
        c = cls(
            vocab=cfg_get(cfg, "vocab_size"),
            hidden=hidden,
            layers=cfg_get(cfg, "num_hidden_layers"),
            heads=n_heads,
            kv_heads=kv_heads,
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

    def forward(self, x, pos, cache, window, docs):
        q, k, v = self.q_norm(self.q_proj(x)), self.k_norm(self.k_proj(x)), self.v_proj(x)
        if self.clip_qkv is not None:
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        q, k = kernels.partial_rope_qk(heads(q, self.heads), heads(k, self.kv_heads), pos, theta=self.theta)
        y = attend(q, k, heads(v, self.kv_heads), cache, self.layer, window, docs=docs)
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


def layer(c: Config, index: int) -> PreNormLayer:
    return PreNormLayer(RMSNorm(c.hidden, c.eps), Attention(c, index), RMSNorm(c.hidden, c.eps), MoE(c))


class OLMoE(RotaryLM):
    def __init__(self, c: Config):
        super().__init__(c, (layer(c, i) for i in range(c.layers)), RMSNorm(c.hidden, c.eps), norm_name="norm",
                         kv_heads=c.kv_heads)


def from_checkpoint(cfg: dict, ckpt: Checkpoint, device) -> OLMoE:
    c = Config.from_hf(cfg)

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

    return load_model(OLMoE, c, ckpt, device, convert=experts)


# ------------------------------------------------------------------------------------------ sweep and tests


HF_MODEL = "OlmoeForCausalLM"
# the sweep: a few layers of OLMoE-1B-7B (full vocab, 64 experts, top-8) on a GPU, a tiny model under the interpreter
SWEEP_SHAPES = (dict(layers=4, hidden=2048, heads=16, kv_heads=16, inner=1024, vocab=50304, experts=64, top_k=8),
                dict(layers=1, hidden=32, heads=2, kv_heads=2, inner=16, vocab=64, experts=8, top_k=2))


def sweep_config(d: dict, max_positions: int, **ids):
    import transformers

    return transformers.OlmoeConfig(
        hidden_size=d["hidden"], intermediate_size=d["inner"], vocab_size=d["vocab"], num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"], num_key_value_heads=d["kv_heads"], num_experts=d["experts"],
        num_experts_per_tok=d["top_k"], **ids)


def sweep_weights(d: dict) -> tuple[int, int]:
    """(per token: attention, router and the top_k experts it runs, LM head; read: every expert, as thousands of
    tokens hit them all)."""
    h, inner, layers = d["hidden"], d["inner"], d["layers"]
    attention = 2 * h * h + 2 * h * (d["kv_heads"] * h // d["heads"])
    active = layers * (attention + h * d["experts"] + d["top_k"] * 3 * h * inner) + h * d["vocab"]
    return active, active + layers * (d["experts"] - d["top_k"]) * 3 * h * inner


def _fused_experts(tensors: dict, hf) -> dict:
    """The fused 3-D expert layout, holding HF's own fused parameters, in place of the per-expert tensors
    (transformers 5 keeps the per-expert names on save; both layouts must load to the same model)."""
    tensors = {name: t for name, t in tensors.items() if ".mlp.experts." not in name}
    for i, hf_layer in enumerate(hf.model.layers):
        prefix = f"model.layers.{i}.mlp.experts."
        tensors[prefix + "gate_up_proj"] = hf_layer.mlp.experts.gate_up_proj.detach().clone()
        tensors[prefix + "down_proj"] = hf_layer.mlp.experts.down_proj.detach().clone()
    return tensors


def tiny_cases() -> dict[str, TinyCase]:
    import transformers

    def config(**kw):  # 64 experts, top-8, GQA (4 query heads, 2 kv heads), head_dim 16
        return transformers.OlmoeConfig(
            hidden_size=64, num_hidden_layers=2, intermediate_size=8, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=96, num_experts=64, num_experts_per_tok=8, initializer_range=0.2, **kw)

    return {
        "olmoe_clip_norm_topk": TinyCase(config(clip_qkv=0.6, norm_topk_prob=True),
                                         save={"max_shard_size": "100KB"}, checks=("generate",)),
        "olmoe": TinyCase(config(norm_topk_prob=False), window=5, checks=("eos",),
                          layouts={"fused_experts": _fused_experts}),
    }
