"""The registered model families, and what a family file must provide.

A family is one file, ``models/<model_type>.py``, serving the checkpoints whose ``config.json`` says
``"model_type": "<model_type>"``, and one line in :data:`FAMILIES`. ``models.from_pretrained``, the model sweep
(``models/sweep.py``: spec ``model_<model_type>``) and the model tests (``tests/test_models.py``, one harness
run on every family's tiny cases) find it there; nothing else names it. The file must provide:

Loading (``models.from_pretrained``). The file imports torch, safetensors and kernels at the top, never
transformers or hypothesis: the sweep and test functions below import transformers inside themselves.

    STRIP: tuple[str, ...]    checkpoint name prefixes dropped on the way in, the first that matches
                              (``("model.",)``), so that a name is the parameter's name in our module tree
    IGNORE: tuple[str, ...]   name suffixes of tensors that are not weights (mask buffers), dropped unread
    from_checkpoint(cfg: dict, ckpt: Checkpoint, device) -> CausalLM
                              our model for ``config.json``'s dict, usually
                              ``_common.load_model(Model, Config.from_hf(cfg), ckpt, device)``: built on ``meta``,
                              every parameter taken by its name and the shape the config implies (``convert``
                              reads tensors stored another way; ``c.tied`` shares the LM head with the embedding)

Hugging Face (the sweep and the tests build the transformers model that ours reproduces):

    HF_MODEL: str             the transformers causal-LM class, e.g. ``"GPT2LMHeadModel"``
    SWEEP_SHAPES: (dict, dict)  the sweep's model shapes: (GPU, interpreter). Keys ``layers`` (a few, not the
                              real depth), ``hidden``, ``heads``, ``inner``, ``vocab``, and any the family's own
                              functions read (OLMoE: ``kv_heads``, ``experts``, ``top_k``: experts per token)
    sweep_config(d: dict, max_positions: int, **ids)
                              the transformers config of sweep shape ``d``: learned position tables get
                              ``max_positions`` rows, ``ids`` (bos/eos/pad token ids) pass through
    sweep_weights(d: dict) -> (active, total)     optional: the weights one token multiplies by and the weights
                              the forward reads (LM head in, embeddings out); default: a dense decoder
                              (``models.sweep.dense_weights``)
    tiny_cases() -> dict[str, TinyCase]
                              the tiny random checkpoints the tests check against HF, by name (unique across
                              families; start it with the model_type): a variant the family supports that the
                              others do not (OPT's post-LN, OLMoE's clip_qkv) is one more case

Every family's tiny cases get every check of ``tests/test_models.py`` that :class:`TinyCase` selects (its
``layouts``: ``tests/test_models_loading.py``); the first case of each family gets ``tests/test_training.py``'s: a
training step (loss, every gradient) equal to HF's, and packed documents. So the model's
``forward(input_ids, cache=None, *, cu_seqlens=None, position_ids=None)`` takes packed rows as the other families
do: ``docs = self.check_ids(...)``, its positions ``docs.positions``, and ``attend(..., docs=docs)`` in every layer
(``_modules.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Any, Callable

# model_type -> the module models/<model_type>.py; one line per family
FAMILIES = (
    "gpt2",
    "opt",
    "persimmon",
    "olmoe",
)

REQUIRED = ("STRIP", "IGNORE", "from_checkpoint", "HF_MODEL", "SWEEP_SHAPES", "sweep_config", "tiny_cases")

# what a TinyCase may ask for beyond the logits check (tests/test_models.py runs them)
CHECKS = {
    "generate": "greedy generate, with the KV cache, equals an argmax loop over HF's full forward",
    "eos": "generate stops at the checkpoint's / the caller's eos ids and pads like HF's generate",
    "window_decode": "the sliding window (TinyCase.window) holds through decode steps too (q_len < kv_len)",
    "wide_window": "a window wider than the sequence is full attention",
    "fp16": "dtype=torch.float16 loads and stays within 1e-2 of HF's fp32 logits",
}


@dataclasses.dataclass(frozen=True)
class TinyCase:
    """A tiny random checkpoint of one family, for ``tests/test_models.py``.

    ``config``: a transformers config (tiny: every kernel runs under the interpreter); the harness builds
    ``getattr(transformers, HF_MODEL)(config)``, perturbs it, ``save_pretrained(folder, **save)`` (a
    ``max_shard_size`` writes shards), then ``edit_config(cfg)`` may rewrite the saved ``config.json`` dict (an
    older spelling of its keys). Every case is checked for logits (1e-4) and a tied LM head as HF's;
    ``window``: also a sliding window of that many keys against HF with the same mask; ``checks``: names from
    :data:`CHECKS`. ``layouts``: name -> ``rewrite(tensors, hf_model) -> tensors``, another way checkpoints of
    this family store the same weights, which must load to the very same model.
    """

    config: Any
    save: dict = dataclasses.field(default_factory=dict)
    edit_config: Callable[[dict], None] | None = None
    window: int | None = None
    checks: tuple[str, ...] = ()
    layouts: dict[str, Callable] = dataclasses.field(default_factory=dict)


def family(model_type: str) -> ModuleType:
    """The module of a registered family (a ValueError for an unknown one, an AttributeError naming what a
    registered file lacks)."""
    if model_type not in FAMILIES:
        raise ValueError(f"unknown model_type {model_type!r}: expected one of {', '.join(FAMILIES)}")
    module = importlib.import_module(f"{__package__}.{model_type}")
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing:
        raise AttributeError(f"models/{model_type}.py lacks {', '.join(missing)} (see models/registry.py)")
    return module
