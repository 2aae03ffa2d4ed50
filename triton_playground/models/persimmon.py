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

from torch import nn

from triton_playground import kernels

from ._common import Checkpoint, DecoderConfig, attention_shape, cfg_get, check_activation, load_model, rope_setting
from ._modules import LayerNorm, PreNormLayer, RotaryLM, attend, merge_heads
from .registry import TinyCase

ACTIVATIONS = {"relu2": "relu2"}
STRIP = ("model.",)
IGNORE = ()


@dataclass
class Config(DecoderConfig):
    eps: float
    qk_layernorm: bool  # LayerNorm of q and k over head_dim
    rotary_dim: int  # RoPE on the first rotary_dim channels of each head
    theta: float
    activation: str

    @classmethod
    def from_hf(cls, cfg: dict) -> Config:
        hidden, n_heads, _ = attention_shape(cfg)
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

    def forward(self, x, pos, cache, window, docs):
        b, s, _ = x.shape
        q, k, v = self.query_key_value(x).view(b, s, self.heads, 3, -1).unbind(3)  # (b, s, heads, head_dim)
        if self.qk_layernorm:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (b, heads, s, head_dim)
        q, k = kernels.partial_rope_qk(q, k, pos, rotary_dim=self.rotary_dim, theta=self.theta)
        return self.dense(merge_heads(attend(q, k, v, cache, self.layer, window, docs=docs)))


class MLP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(c.hidden, c.inner)
        self.dense_4h_to_h = nn.Linear(c.inner, c.hidden)
        self.activation = c.activation

    def forward(self, x):
        return kernels.mlp(x, self.dense_h_to_4h.weight, self.dense_h_to_4h.bias,
                           self.dense_4h_to_h.weight, self.dense_4h_to_h.bias, activation=self.activation)


def layer(c: Config, index: int) -> PreNormLayer:
    return PreNormLayer(LayerNorm(c.hidden, c.eps), Attention(c, index), LayerNorm(c.hidden, c.eps), MLP(c))


class Persimmon(RotaryLM):
    def __init__(self, c: Config):
        super().__init__(c, (layer(c, i) for i in range(c.layers)), LayerNorm(c.hidden, c.eps),
                         norm_name="final_layernorm", kv_heads=c.heads)


def from_checkpoint(cfg: dict, ckpt: Checkpoint, device) -> Persimmon:
    return load_model(Persimmon, Config.from_hf(cfg), ckpt, device)


# ------------------------------------------------------------------------------------------ sweep and tests


HF_MODEL = "PersimmonForCausalLM"
# the sweep: a few layers of Persimmon-8B (full vocab) on a GPU, a tiny model under the interpreter
SWEEP_SHAPES = (dict(layers=2, hidden=4096, heads=64, inner=16384, vocab=262144),
                dict(layers=1, hidden=32, heads=2, inner=64, vocab=64))


ROPE = {"rope_type": "default", "rope_theta": 25000.0, "partial_rotary_factor": 0.5}  # the HF configs' RoPE


def sweep_config(d: dict, max_positions: int, **ids):
    import transformers

    return transformers.PersimmonConfig(
        hidden_size=d["hidden"], intermediate_size=d["inner"], vocab_size=d["vocab"], num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"], rope_parameters=dict(ROPE), **ids)


def _old_rope_keys(cfg: dict) -> None:
    """config.json as older transformers wrote it: rope_theta, partial_rotary_factor at the top level."""
    rope = cfg.pop("rope_parameters")
    cfg.update(rope_theta=rope["rope_theta"], partial_rotary_factor=rope["partial_rotary_factor"])


def tiny_cases() -> dict[str, TinyCase]:
    import transformers

    # qk-LayerNorm, head_dim 20 with rotary_dim 10, theta 25000; saved with the older rope spelling
    config = transformers.PersimmonConfig(
        hidden_size=40, num_hidden_layers=2, intermediate_size=64, num_attention_heads=2, vocab_size=96,
        initializer_range=0.2, rope_parameters=dict(ROPE))
    return {"persimmon": TinyCase(config, edit_config=_old_rope_keys, window=4, checks=("generate", "eos"))}
