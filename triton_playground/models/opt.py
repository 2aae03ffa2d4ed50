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

from torch import nn

from triton_playground import kernels

from ._common import Checkpoint, DecoderConfig, attention_shape, cfg_get, check_activation, load_model
from ._modules import CausalLM, LayerNorm, attend, heads, merge_heads, positions
from .registry import TinyCase

ACTIVATIONS = {"relu": "relu"}
STRIP = ("model.decoder.", "decoder.")
IGNORE = ()
POSITION_OFFSET = 2  # OPT's embed_positions has 2 extra leading rows (a fairseq legacy)


@dataclass
class Config(DecoderConfig):
    positions: int
    embed: int  # word_embed_proj_dim
    pre_ln: bool  # do_layer_norm_before
    final_ln: bool  # a final_layer_norm after the last layer
    bias: bool  # linear layers with biases (enable_bias)
    affine: bool  # LayerNorms with weight and bias (layer_norm_elementwise_affine)
    activation: str

    @classmethod
    def from_hf(cls, cfg: dict) -> Config:
        hidden, n_heads, _ = attention_shape(cfg)
        pre_ln = cfg_get(cfg, "do_layer_norm_before", default=True)
        c = cls(
            vocab=cfg_get(cfg, "vocab_size"),
            positions=cfg_get(cfg, "max_position_embeddings"),
            hidden=hidden,
            embed=cfg_get(cfg, "word_embed_proj_dim", default=hidden),
            layers=cfg_get(cfg, "num_hidden_layers"),
            heads=n_heads,
            inner=cfg_get(cfg, "ffn_dim"),
            pre_ln=pre_ln,
            final_ln=pre_ln and not cfg_get(cfg, "_remove_final_layer_norm", default=False),
            bias=cfg_get(cfg, "enable_bias", default=True),
            affine=cfg_get(cfg, "layer_norm_elementwise_affine", default=True),
            activation=check_activation(cfg_get(cfg, "activation_function", default="relu"), ACTIVATIONS),
            tied=cfg_get(cfg, "tie_word_embeddings", default=True),
        )
        return c


class Attention(nn.Module):
    def __init__(self, c: Config, layer: int):
        super().__init__()
        self.q_proj = nn.Linear(c.hidden, c.hidden, bias=c.bias)
        self.k_proj = nn.Linear(c.hidden, c.hidden, bias=c.bias)
        self.v_proj = nn.Linear(c.hidden, c.hidden, bias=c.bias)
        self.out_proj = nn.Linear(c.hidden, c.hidden, bias=c.bias)
        self.layer, self.heads = layer, c.heads

    def forward(self, x, cache, window, docs):
        q, k, v = (heads(proj(x), self.heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(merge_heads(attend(q, k, v, cache, self.layer, window, docs=docs)))


class Layer(nn.Module):
    def __init__(self, c: Config, layer: int):
        super().__init__()
        self.self_attn = Attention(c, layer)
        self.self_attn_layer_norm = LayerNorm(c.hidden, affine=c.affine)
        self.fc1 = nn.Linear(c.hidden, c.inner, bias=c.bias)
        self.fc2 = nn.Linear(c.inner, c.hidden, bias=c.bias)
        self.final_layer_norm = LayerNorm(c.hidden, affine=c.affine)
        self.pre_ln, self.activation = c.pre_ln, c.activation

    def mlp(self, x):
        return kernels.mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                           activation=self.activation)

    def forward(self, x, cache, window, docs):
        if self.pre_ln:
            x = x + self.self_attn(self.self_attn_layer_norm(x), cache, window, docs)
            return x + self.mlp(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.self_attn(x, cache, window, docs))
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

    def forward(self, input_ids, cache=None, *, cu_seqlens=None, position_ids=None):
        docs = self.check_ids(input_ids, cache, cu_seqlens, position_ids)
        x = self.embed_tokens(input_ids)
        if self.project_in is not None:
            x = self.project_in(x)
        pos = docs.positions if docs is not None else positions(cache, input_ids.shape[1], input_ids.device)
        x = x + self.embed_positions(pos + POSITION_OFFSET)  # packed: each document's positions restart at 2
        for layer in self.layers:
            x = layer(x, cache, self.window, docs)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return self.lm_head(x)


def from_checkpoint(cfg: dict, ckpt: Checkpoint, device) -> OPT:
    return load_model(OPT, Config.from_hf(cfg), ckpt, device)


# ------------------------------------------------------------------------------------------ sweep and tests


HF_MODEL = "OPTForCausalLM"
# the sweep: a few layers of OPT-1.3b (full vocab) on a GPU, a tiny model under the interpreter
SWEEP_SHAPES = (dict(layers=4, hidden=2048, heads=32, inner=8192, vocab=50272),
                dict(layers=1, hidden=32, heads=2, inner=64, vocab=64))


def sweep_config(d: dict, max_positions: int, **ids):
    import transformers

    return transformers.OPTConfig(
        hidden_size=d["hidden"], ffn_dim=d["inner"], vocab_size=d["vocab"], num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"], max_position_embeddings=max_positions, word_embed_proj_dim=d["hidden"],
        **ids)


def tiny_cases() -> dict[str, TinyCase]:
    import transformers

    tiny = dict(num_hidden_layers=2, num_attention_heads=2, vocab_size=96, max_position_embeddings=16, init_std=0.2)
    return {
        # pre-LN, head_dim 16, no linear biases (enable_bias=False: the kernels get bias None)
        "opt_pre_ln": TinyCase(transformers.OPTConfig(hidden_size=32, ffn_dim=48, enable_bias=False, **tiny),
                               checks=("eos", "wide_window")),
        # opt-350m's layout: post-LN, project_in/out (embed 24, hidden 40), head_dim 20
        "opt_post_ln_proj": TinyCase(transformers.OPTConfig(hidden_size=40, ffn_dim=64, do_layer_norm_before=False,
                                                            word_embed_proj_dim=24, **tiny), checks=("generate",)),
    }
