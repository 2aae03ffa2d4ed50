"""OPT, composed from the playground's kernels.

    x = project_in(embed_tokens[ids]) + embed_positions[positions + 2]      # OPT's learned positions start at 2
    pre-LN (most OPTs):   x = x + out_proj(attention(ln1(x)));   x = x + mlp(ln2(x));   x = final_layer_norm(x)
    post-LN (opt-350m):   x = ln1(x + out_proj(attention(x)));   x = ln2(x + mlp(x))    # no final norm
    logits = project_out(x) @ embed_tokens.T                                   # tied LM head

``project_in``/``project_out`` exist when ``word_embed_proj_dim != hidden_size`` (opt-350m embeds in 512 and
runs the decoder in 1024). Kernels: ``layer_norm``, ``attention``, ``mlp(activation="relu")`` (fc1 -> relu ->
fc2 fused); q/k/v/out projections and the LM head are ``nn.Linear``. Checkpoint names start with
``model.decoder.`` (or ``decoder.`` in older files); both load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import kernels

from ._common import CausalLM, Checkpoint, LayerNorm, attend, cfg_get, check_activation, heads, load_model
from ._common import merge_heads, positions

ACTIVATIONS = {"relu": "relu"}
STRIP = ("model.decoder.", "decoder.")
IGNORE = ()
POSITION_OFFSET = 2  # OPT's embed_positions has 2 extra leading rows (a fairseq legacy)


@dataclass
class Config:
    vocab: int
    positions: int
    hidden: int
    embed: int  # word_embed_proj_dim
    layers: int
    heads: int
    ffn: int
    pre_ln: bool  # do_layer_norm_before
    final_ln: bool
    bias: bool
    affine: bool
    activation: str
    tied: bool

    @classmethod
    def from_hf(cls, cfg: dict) -> Config:
        hidden = cfg_get(cfg, "hidden_size")
        pre_ln = cfg_get(cfg, "do_layer_norm_before", default=True)
        c = cls(
            vocab=cfg_get(cfg, "vocab_size"),
            positions=cfg_get(cfg, "max_position_embeddings"),
            hidden=hidden,
            embed=cfg_get(cfg, "word_embed_proj_dim", default=hidden),
            layers=cfg_get(cfg, "num_hidden_layers"),
            heads=cfg_get(cfg, "num_attention_heads"),
            ffn=cfg_get(cfg, "ffn_dim"),
            pre_ln=pre_ln,
            final_ln=pre_ln and not cfg_get(cfg, "_remove_final_layer_norm", default=False),
            bias=cfg_get(cfg, "enable_bias", default=True),
            affine=cfg_get(cfg, "layer_norm_elementwise_affine", default=True),
            activation=check_activation(cfg_get(cfg, "activation_function", default="relu"), ACTIVATIONS),
            tied=cfg_get(cfg, "tie_word_embeddings", default=True),
        )
        if c.hidden % c.heads:
            raise ValueError(f"hidden_size ({c.hidden}) must be divisible by num_attention_heads ({c.heads})")
        return c


class Attention(nn.Module):
    def __init__(self, c: Config, layer: int):
        super().__init__()
        self.q_proj = nn.Linear(c.hidden, c.hidden, bias=c.bias)
        self.k_proj = nn.Linear(c.hidden, c.hidden, bias=c.bias)
        self.v_proj = nn.Linear(c.hidden, c.hidden, bias=c.bias)
        self.out_proj = nn.Linear(c.hidden, c.hidden, bias=c.bias)
        self.layer, self.heads = layer, c.heads

    def forward(self, x, cache, window):
        q, k, v = (heads(proj(x), self.heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(merge_heads(attend(q, k, v, cache, self.layer, window)))


class Layer(nn.Module):
    def __init__(self, c: Config, layer: int):
        super().__init__()
        self.self_attn = Attention(c, layer)
        self.self_attn_layer_norm = LayerNorm(c.hidden, affine=c.affine)
        self.fc1 = nn.Linear(c.hidden, c.ffn, bias=c.bias)
        self.fc2 = nn.Linear(c.ffn, c.hidden, bias=c.bias)
        self.final_layer_norm = LayerNorm(c.hidden, affine=c.affine)
        self.pre_ln, self.activation = c.pre_ln, c.activation

    def mlp(self, x):
        return kernels.mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                           activation=self.activation)

    def forward(self, x, cache, window):
        if self.pre_ln:
            x = x + self.self_attn(self.self_attn_layer_norm(x), cache, window)
            return x + self.mlp(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.self_attn(x, cache, window))
        return self.final_layer_norm(x + self.mlp(x))


class OPT(CausalLM):
    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab, c.embed)
        self.embed_positions = nn.Embedding(c.positions + POSITION_OFFSET, c.hidden)
        self.project_in = nn.Linear(c.embed, c.hidden, bias=False) if c.embed != c.hidden else None
        self.layers = nn.ModuleList(Layer(c, layer) for layer in range(c.layers))
        self.final_layer_norm = LayerNorm(c.hidden, affine=c.affine) if c.final_ln else None
        self.project_out = nn.Linear(c.hidden, c.embed, bias=False) if c.embed != c.hidden else None
        self.lm_head = nn.Linear(c.embed, c.vocab, bias=False)
        self.n_layers, self.n_kv_heads, self.head_dim = c.layers, c.heads, c.hidden // c.heads
        self.max_positions = c.positions

    def forward(self, input_ids, cache=None):
        self.check_ids(input_ids, cache)
        x = self.embed_tokens(input_ids)
        if self.project_in is not None:
            x = self.project_in(x)
        x = x + self.embed_positions(positions(cache, input_ids.shape[1], input_ids.device) + POSITION_OFFSET)
        for layer in self.layers:
            x = layer(x, cache, self.window)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return self.lm_head(x)


def from_checkpoint(cfg: dict, ckpt: Checkpoint, device) -> OPT:
    c = Config.from_hf(cfg)
    with torch.device("meta"):
        model = OPT(c)
    return load_model(model, ckpt, device, tied="embed_tokens.weight" if c.tied else None)
