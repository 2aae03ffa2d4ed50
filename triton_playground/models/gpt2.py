"""GPT-2, composed from the playground's kernels (nanoGPT-style: config, block, model, loader).

    x = wte[ids] + wpe[positions]
    per block:  x = x + c_proj(attention(ln_1(x)))          # causal, scale 1/sqrt(head_dim)
                x = x + mlp(ln_2(x))                         # c_fc -> gelu(tanh) -> c_proj, one fused kernel
    logits = ln_f(x) @ wte.T                                  # tied LM head

Kernels: ``layer_norm`` (ln_1, ln_2, ln_f), ``attention``, ``mlp(activation="gelu_tanh")``; the QKV and output
projections and the LM head are plain ``nn.Linear``. Checkpoints store GPT-2's ``Conv1D`` matrices as
``(in, out)``: the loader transposes them once to ``nn.Linear``'s ``(out, in)``. Original OpenAI-converted files
name tensors ``h.0.attn...``, ``save_pretrained`` writes ``transformer.h.0.attn...``: both load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from triton_playground import kernels

from ._common import Checkpoint, DecoderConfig, attention_shape, cfg_get, check_activation, load_model
from ._modules import CausalLM, LayerNorm, attend, heads, merge_heads, positions
from .registry import TinyCase

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
STRIP = ("transformer.",)
IGNORE = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some checkpoints carry


@dataclass
class Config(DecoderConfig):
    positions: int
    eps: float
    activation: str
    scale_attn: bool  # scale scores by 1/sqrt(head_dim)
    scale_by_layer: bool  # and by 1/(layer + 1)

    @classmethod
    def from_hf(cls, cfg: dict) -> Config:
        hidden, n_heads, _ = attention_shape(cfg, ("n_embd", "hidden_size"), ("n_head", "num_attention_heads"))
        c = cls(
            vocab=cfg_get(cfg, "vocab_size"),
            positions=cfg_get(cfg, "n_positions", "max_position_embeddings"),
            hidden=hidden,
            layers=cfg_get(cfg, "n_layer", "num_hidden_layers"),
            heads=n_heads,
            inner=cfg_get(cfg, "n_inner", default=4 * hidden),
            eps=cfg_get(cfg, "layer_norm_epsilon", default=1e-5),
            activation=check_activation(cfg_get(cfg, "activation_function", default="gelu_new"), ACTIVATIONS),
            scale_attn=cfg_get(cfg, "scale_attn_weights", default=True),
            scale_by_layer=cfg_get(cfg, "scale_attn_by_inverse_layer_idx", default=False),
            tied=cfg_get(cfg, "tie_word_embeddings", default=True),
        )
        if cfg.get("add_cross_attention"):
            raise NotImplementedError("GPT-2 with cross-attention is not supported")
        return c


class Attention(nn.Module):
    def __init__(self, c: Config, layer: int):
        super().__init__()
        self.c_attn = nn.Linear(c.hidden, 3 * c.hidden)  # q, k, v side by side
        self.c_proj = nn.Linear(c.hidden, c.hidden)
        self.layer, self.heads, self.hidden = layer, c.heads, c.hidden
        self.scale = (c.hidden // c.heads) ** -0.5 if c.scale_attn else 1.0
        if c.scale_by_layer:
            self.scale /= layer + 1

    def forward(self, x, cache, window, docs):
        q, k, v = (heads(t, self.heads) for t in self.c_attn(x).split(self.hidden, dim=-1))
        y = attend(q, k, v, cache, self.layer, window, scale=self.scale, docs=docs)
        return self.c_proj(merge_heads(y))


class MLP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c_fc = nn.Linear(c.hidden, c.inner)
        self.c_proj = nn.Linear(c.inner, c.hidden)
        self.activation = c.activation

    def forward(self, x):
        return kernels.mlp(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias,
                           activation=self.activation)


class Block(nn.Module):
    def __init__(self, c: Config, layer: int):
        super().__init__()
        self.ln_1 = LayerNorm(c.hidden, c.eps)
        self.attn = Attention(c, layer)
        self.ln_2 = LayerNorm(c.hidden, c.eps)
        self.mlp = MLP(c)

    def forward(self, x, cache, window, docs):
        x = x + self.attn(self.ln_1(x), cache, window, docs)
        return x + self.mlp(self.ln_2(x))


class GPT2(CausalLM):
    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.wte = nn.Embedding(c.vocab, c.hidden)
        self.wpe = nn.Embedding(c.positions, c.hidden)
        self.h = nn.ModuleList(Block(c, layer) for layer in range(c.layers))
        self.ln_f = LayerNorm(c.hidden, c.eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)
        self.n_layers, self.n_kv_heads, self.head_dim = c.layers, c.heads, c.hidden // c.heads
        self.max_positions = c.positions

    def forward(self, input_ids, cache=None, *, cu_seqlens=None, position_ids=None):
        docs = self.check_ids(input_ids, cache, cu_seqlens, position_ids)
        pos = docs.positions if docs is not None else positions(cache, input_ids.shape[1], input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)
        for block in self.h:
            x = block(x, cache, self.window, docs)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.lm_head(self.ln_f(x))


def from_checkpoint(cfg: dict, ckpt: Checkpoint, device) -> GPT2:
    def conv1d(name, shape):  # Conv1D stores (in, out): read it so, keep nn.Linear's (out, in)
        return ckpt.take(name, shape[::-1]).t().contiguous() if name.endswith(CONV1D) else None

    return load_model(GPT2, Config.from_hf(cfg), ckpt, device, convert=conv1d, embedding="wte.weight")


# ------------------------------------------------------------------------------------------ sweep and tests


HF_MODEL = "GPT2LMHeadModel"
# the sweep: a few layers of GPT-2-small (full vocab) on a GPU, a tiny model under the interpreter
SWEEP_SHAPES = (dict(layers=4, hidden=768, heads=12, inner=3072, vocab=50257),
                dict(layers=1, hidden=32, heads=2, inner=64, vocab=64))


def sweep_config(d: dict, max_positions: int, **ids):
    import transformers

    return transformers.GPT2Config(n_embd=d["hidden"], n_layer=d["layers"], n_head=d["heads"], n_inner=d["inner"],
                                   vocab_size=d["vocab"], n_positions=max_positions, **ids)


def _original_names(tensors: dict, hf) -> dict:
    """OpenAI-converted GPT-2 files: names without ``transformer.``, and ``attn.bias`` causal-mask buffers."""
    tensors = {name.removeprefix("transformer."): t for name, t in tensors.items()}
    n = hf.config.n_positions
    tensors["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, n, n))
    return tensors


def tiny_cases() -> dict[str, TinyCase]:
    import transformers

    # head_dim 24; scores also scaled by 1/(layer+1); written in shards
    config = transformers.GPT2Config(n_embd=48, n_layer=2, n_head=2, vocab_size=96, n_positions=16,
                                     initializer_range=0.2, scale_attn_by_inverse_layer_idx=True)
    return {"gpt2": TinyCase(config, save={"max_shard_size": "40KB"}, window=3,
                             checks=("generate", "eos", "window_decode", "fp16"),
                             layouts={"original_names": _original_names})}
