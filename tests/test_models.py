"""Every registered model family against Hugging Face transformers, on tiny random checkpoints, in fp32 on the CPU.

One harness for all families: the cases are each family's ``tiny_cases()`` (models/registry.py says what a
family file provides), so a new family is checked as soon as it is registered. Every case builds a transformers
model from its config (random init, large enough that attention is not uniform), perturbs it so no norm weight is
1 and no bias is 0, writes it with ``save_pretrained`` (some sharded), loads it with ``models.from_pretrained``
and checks logits within 1e-4 relative error of HF's; a case's ``checks`` add greedy generation (with our KV
cache) token for token equal to an argmax loop over HF's full forward, eos stopping as HF's ``generate``, sliding
windows against HF with an explicit windowed mask, fp16; its ``layouts`` other ways to store the same weights.
Sizes are tiny (2 layers, hidden <= 64, vocab <= 128, seq <= 12) because every kernel runs under the Triton
interpreter. The loading (other layouts, errors, no transformers needed) is tests/test_models_loading.py's, on the
same cases.
"""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch

from triton_playground import models
from triton_playground.models import registry

transformers = pytest.importorskip("transformers")

TOL = 1e-4  # fp32: ||ours - hf|| / ||hf||
SEQ, BATCH = 10, 2

# case name -> (family module, TinyCase), registry order: a case's seed is its index here
_ALL = [(name, registry.family(model_type), case) for model_type in registry.FAMILIES
        for name, case in registry.family(model_type).tiny_cases().items()]
CASES = {name: (module, case) for name, module, case in _ALL}
FIRST = [next(name for name, (m, _) in CASES.items() if m is registry.family(t)) for t in registry.FAMILIES]
ONE_FILE = next(name for name, (_, case) in CASES.items() if "max_shard_size" not in case.save)
SHARDED = next(name for name, (_, case) in CASES.items() if "max_shard_size" in case.save)


def _with(check):
    return [name for name, (_, case) in CASES.items() if check in case.checks]


def _perturb(hf, seed):
    """No norm weight at 1, no bias at 0: every parameter the loader could drop or mix up changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # a norm's weight
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    return hf


class Built:
    """A saved HF case: the HF model (fp32, eval) and the folder ``save_pretrained`` wrote."""

    def __init__(self, name, root):
        self.family, self.case = CASES[name]
        seed = list(CASES).index(name)
        torch.manual_seed(seed)
        hf = getattr(transformers, self.family.HF_MODEL)(copy.deepcopy(self.case.config))
        self.hf = _perturb(hf, seed=seed).eval()
        self.hf.config._attn_implementation = "sdpa"
        self.vocab = self.hf.config.vocab_size
        self.path = os.path.join(root, name)
        self.hf.save_pretrained(self.path, **self.case.save)
        if self.case.edit_config is not None:
            _edit_config(self.path, self.case.edit_config)

    def ids(self, seed, batch=BATCH, seq=SEQ):
        return torch.randint(0, self.vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))

    def logits(self, ids, window=None):
        with torch.no_grad():
            return self.hf(ids, attention_mask=_window_mask(ids, window)).logits

    def greedy(self, prompt, n, window=None):
        ids = prompt
        for _ in range(n):
            ids = torch.cat([ids, self.logits(ids, window)[:, -1].argmax(-1, keepdim=True)], dim=1)
        return ids


def _window_mask(ids, window):
    """HF takes a 4-D additive mask as is: causal, and at most ``window`` keys (itself included)."""
    if window is None:
        return None
    s = ids.shape[1]
    i, j = torch.arange(s)[:, None], torch.arange(s)[None, :]
    allowed = (j <= i) & (j > i - window)
    return torch.zeros(s, s).masked_fill(~allowed, float("-inf")).expand(ids.shape[0], 1, s, s)


def _edit_config(path, edit, name="config.json"):
    file = os.path.join(path, name)
    with open(file) as f:
        cfg = json.load(f)
    edit(cfg)
    with open(file, "w") as f:
        json.dump(cfg, f)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Built(name, str(root))
        return cache[name]

    return get


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _state(model):
    return {k: v for k, v in model.state_dict().items()}


def _shared(model):
    """The groups of parameter names that are one Parameter (a tied LM head and its embedding)."""
    groups = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), set()).add(name)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


# ------------------------------------------------------------------------------------------------ the registry


def test_every_family_keeps_the_contract():
    assert len(CASES) == len(_ALL), "tiny case names must be unique across families"
    for name, (family, case) in CASES.items():
        assert isinstance(case, registry.TinyCase) and name.startswith(family.__name__.rsplit(".", 1)[1])
        assert set(case.checks) <= set(registry.CHECKS), f"{name}: unknown checks"
        assert "window_decode" not in case.checks or case.window is not None
    for model_type in registry.FAMILIES:
        family = registry.family(model_type)
        assert all(len(d) for d in family.SWEEP_SHAPES) and len(family.SWEEP_SHAPES) == 2
        assert isinstance(family.STRIP, tuple) and isinstance(family.IGNORE, tuple)


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_hf(built, name):
    case = built(name)
    model = models.from_pretrained(case.path)
    assert model.unused_weights == []
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    hf_tied = case.hf.get_output_embeddings().weight is case.hf.get_input_embeddings().weight
    assert any("lm_head.weight" in g for g in _shared(model)) == hf_tied
    ids = case.ids(1)
    ours, ref = model(ids), case.logits(ids)
    assert ours.shape == ref.shape == (BATCH, SEQ, case.vocab)
    assert _rel(ours, ref) < TOL


@pytest.mark.parametrize("name", _with("generate"))
def test_generate_matches_hf_greedy(built, name):
    case = built(name)
    model = models.from_pretrained(case.path)
    prompt = case.ids(2, seq=5)
    out = model.generate(prompt, max_new_tokens=4)
    assert out.shape == (BATCH, 9) and torch.equal(out[:, :5], prompt)
    assert torch.equal(out, case.greedy(prompt, 4))


def _first_index(tokens, token) -> int:
    """Where ``token`` first occurs in the 1-D ``tokens`` (``len(tokens)`` when it does not)."""
    hits = (tokens == token).nonzero()
    return hits[0, 0].item() if len(hits) else len(tokens)


@pytest.mark.parametrize("name", _with("eos"))
def test_generate_stops_at_eos_like_hf(built, name, tmp_path):
    """eos from the checkpoint (one row finishes, is padded, the other goes on) and from the keyword (a list: every
    row finishes, decoding stops early), each token for token HF's ``generate(do_sample=False)``, padding too."""
    case = built(name)
    n_new, prompt = 6, case.ids(7, seq=4) % (case.vocab - 3) + 3  # no ids 0..2: HF would mask a pad token
    free = case.greedy(prompt, n_new)[:, 4:]  # the continuation when nothing stops it
    # eos: a token row 0 emits before row 1 emits it (if ever), so row 0 is padded while row 1 still decodes
    step = next(j for j in [*range(1, n_new - 1), 0] if _first_index(free[1], free[0, j]) > j)
    eos = free[0, step].item()

    def hf_generate(eos_token_id):
        return case.hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                                do_sample=False, eos_token_id=eos_token_id)

    folder = str(tmp_path / "eos")
    shutil.copytree(case.path, folder)
    for file in ("config.json", "generation_config.json"):  # HF reads the second when it is there
        _edit_config(folder, lambda c: c.update(eos_token_id=eos), file)
    ref = hf_generate(eos)
    pad = case.hf.generation_config.pad_token_id
    first_eos = _first_index(free[0], eos)
    assert ref.shape == (BATCH, 4 + n_new)  # row 1 went on ...
    assert (ref[0, 4 + first_eos + 1:] == (eos if pad is None else pad)).all()  # ... while row 0 was padded
    assert torch.equal(models.from_pretrained(folder).generate(prompt, n_new), ref)

    both = [free[0, 1].item(), free[1, 2].item()]  # each row hits one of them by its third token
    ref = hf_generate(both)
    assert ref.shape[1] <= 4 + 3  # HF stopped early
    assert torch.equal(models.from_pretrained(case.path).generate(prompt, n_new, eos_token_id=both), ref)


def test_generation_tokens_prefer_generation_config(tmp_path):
    """HF's generate reads generation_config.json when the folder has one; config.json fills in what it lacks."""
    from triton_playground.models._common import read_generation_tokens

    cfg = {"eos_token_id": 2, "pad_token_id": 1}
    assert read_generation_tokens(tmp_path, cfg) == ([2], 1)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    assert read_generation_tokens(tmp_path, cfg) == ([7, 9], 1)
    assert read_generation_tokens(tmp_path, {}) == ([7, 9], None)


@pytest.mark.parametrize("name", [name for name, (_, case) in CASES.items() if case.window is not None])
def test_sliding_window_matches_hf_mask(built, name):
    case = built(name)
    window = case.case.window
    model = models.from_pretrained(case.path, window=window)
    ids = case.ids(3)
    assert _rel(model(ids), case.logits(ids, window)) < TOL
    if "window_decode" in case.case.checks:  # decode steps with q_len < kv_len also honour the window
        prompt = ids[:, :5]
        assert torch.equal(model.generate(prompt, 4), case.greedy(prompt, 4, window))


@pytest.mark.parametrize("name", _with("wide_window"))
def test_window_wider_than_sequence_is_full_attention(built, name):
    case = built(name)
    ids = case.ids(4)
    full, wide = models.from_pretrained(case.path), models.from_pretrained(case.path, window=SEQ + 3)
    assert _rel(wide(ids), full(ids)) < 1e-6


@pytest.mark.parametrize("name", _with("fp16"))
def test_fp16_weights(built, name):
    case = built(name)
    model = models.from_pretrained(case.path, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in model.parameters())
    ids = case.ids(5)
    assert _rel(model(ids).float(), case.logits(ids)) < 1e-2
