"""``model.generate`` as people expect it from HF: batched prompts of different lengths (left padding and an
attention mask: greedy tokens equal to HF's ``generate`` on the same padded batch, each row as if alone), sampling
with temperature / top-k / top-p in HF's order (the warpers equal HF's; with the same global seed, HF's very tokens)
and reproducible from a ``torch.Generator``, and eos handling as HF does it in a padded batch. Each family's first
tiny case, fp32."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from triton_playground import models
from triton_playground.kernels import _runtime as rt
from triton_playground.models.sampling import next_tokens, warp_logits

transformers = pytest.importorskip("transformers")
from tests.test_models import CASES, FIRST, Built  # noqa: E402

PAD = 0
DEV = rt.DEVICE


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, monkeypatch_module):
    """name -> (Built: the HF model and its folder, our model loaded from it). OLMoE's cases get 8 experts, top-2,
    instead of 64, top-8 (the interpreter runs the MoE kernels per expert block; test_models.py covers 64)."""
    root, cache = str(tmp_path_factory.mktemp("generate")), {}

    def get(name):
        if name not in cache:
            family, case = CASES[name]
            if case.config.model_type == "olmoe":
                config = copy.deepcopy(case.config)
                config.num_experts, config.num_experts_per_tok = 8, 2
                monkeypatch_module.setitem(CASES, name, (family, dataclasses.replace(case, config=config)))
            built = Built(name, root)
            cache[name] = built, models.from_pretrained(built.path)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _padded_batch(case, seed, lengths=(6, 3, 5)):
    """Prompts of ``lengths`` tokens (ids >= 3: none is a special token), left-padded with PAD, and their mask."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, case.vocab, (n,), generator=g)
        mask[row, width - n:] = 1
    return ids, mask


def _gen(model, ids, n, attention_mask=None, **kw):
    """Our generate with the inputs on the kernels' device (the HF model stays on the CPU); the tokens on the CPU."""
    mask = attention_mask.to(DEV) if attention_mask is not None else None
    return model.generate(ids.to(DEV), n, attention_mask=mask, **kw).cpu()


def _hf_generate(case, ids, mask, n, **kw):
    return case.hf.generate(ids, attention_mask=mask, max_new_tokens=n, pad_token_id=PAD, **kw)


@pytest.mark.parametrize("name", FIRST)
def test_padded_batch_greedy_equals_hf(loaded, name):
    case, model = loaded(name)
    ids, mask = _padded_batch(case, 1)
    # the checkpoint's eos on both sides (HF reads the same generation config)
    out = _gen(model, ids, 4, attention_mask=mask, pad_token_id=PAD)
    assert torch.equal(out, _hf_generate(case, ids, mask, 4, do_sample=False))


def test_a_padded_row_continues_as_if_alone(loaded):
    """Left padding changes nothing for a row, with or without a sliding window (counted in the row's own keys)."""
    case, model = loaded(FIRST[0])
    ids, mask = _padded_batch(case, 1, lengths=(5, 2))
    for m in (model, models.from_pretrained(case.path, window=2)):
        out = _gen(m, ids, 4, attention_mask=mask, eos_token_id=[])
        for row in range(ids.shape[0]):
            alone = ids[row:row + 1, int((mask[row] == 0).sum()):]
            assert torch.equal(_gen(m, alone, 4, eos_token_id=[])[0, -4:], out[row, -4:])


@pytest.mark.skipif(rt.GPU, reason="HF runs on the CPU: its global RNG and a GPU's draw different numbers")
@pytest.mark.parametrize("name", FIRST)
def test_sampling_equals_hf_with_the_same_seed(loaded, name):
    case, model = loaded(name)
    ids, mask = _padded_batch(case, 2)
    sampling = dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9)
    torch.manual_seed(11)
    ref = _hf_generate(case, ids, mask, 5, **sampling)
    torch.manual_seed(11)
    assert torch.equal(_gen(model, ids, 5, attention_mask=mask, pad_token_id=PAD, **sampling), ref)


def test_sampling_is_reproducible_from_a_generator(loaded):
    case, model = loaded(FIRST[0])
    ids, mask = _padded_batch(case, 3, lengths=(4, 2, 4, 4))

    def sample(seed, **kw):
        g = torch.Generator(device=DEV).manual_seed(seed)
        return _gen(model, ids, 4, attention_mask=mask, eos_token_id=[], do_sample=True, generator=g, **kw)

    first = sample(0, temperature=1.5)
    assert torch.equal(sample(0, temperature=1.5), first)
    assert not torch.equal(sample(1, temperature=1.5), first)  # 16 draws at temperature 1.5: a repeat is ~impossible


def test_top_k_1_sampling_is_greedy():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    assert torch.equal(next_tokens(logits, True, 0.5, 1, 0.3, g), next_tokens(logits, False))


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.6, None, None), (1.0, 5, None),
                                                     (1.0, None, 0.8), (0.7, 10, 0.9), (2.0, 3, 0.5),
                                                     (1.0, 0, 1.0), (0.9, 1, 0.01)])
def test_warpers_equal_hf_in_hf_order(temperature, top_k, top_p):
    """Our logits processing equals HF's Temperature -> TopK -> TopP warpers (their order in ``generate``), ties in
    the logits included (top-k keeps every token tied with the k-th)."""
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 50, generator=g) * 3
    scores[:, 10:13] = scores[:, 7:8]  # ties
    hf = LogitsProcessorList([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else [])
    if top_k:
        hf.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        hf.append(TopPLogitsWarper(top_p))
    ours = warp_logits(scores, temperature, top_k, top_p)
    assert torch.equal(ours, hf(None, scores.clone()))
    assert (ours > -torch.inf).sum(-1).min() >= 1


@pytest.mark.parametrize("name", FIRST[:1])
def test_eos_in_a_padded_batch_like_hf(loaded, name):
    """eos (a list: each row hits one early) in a left-padded batch, greedy and sampled: finished rows are padded,
    decoding stops when all are finished, token for token HF's generate."""
    case, model = loaded(name)
    ids, mask = _padded_batch(case, 4)
    free = _gen(model, ids, 6, attention_mask=mask, eos_token_id=[])[:, ids.shape[1]:]
    eos = sorted({free[0, 1].item(), free[1, 3].item()})  # row 0 stops by its 2nd token, row 1 by its 4th
    ref = _hf_generate(case, ids, mask, 6, do_sample=False, eos_token_id=eos)
    out = _gen(model, ids, 6, attention_mask=mask, eos_token_id=eos, pad_token_id=PAD)
    assert torch.equal(out, ref) and (out[0, ids.shape[1] + 2:] == PAD).all()
    if not rt.GPU:
        torch.manual_seed(3)
        ref = _hf_generate(case, ids, mask, 6, do_sample=True, top_k=3, eos_token_id=eos)
        torch.manual_seed(3)
        out = _gen(model, ids, 6, attention_mask=mask, eos_token_id=eos, pad_token_id=PAD, do_sample=True,
                             top_k=3)
        assert torch.equal(out, ref)


def test_bad_masks_and_sampling_arguments(loaded):
    _, model = loaded(FIRST[0])
    ids = torch.full((2, 4), 5, dtype=torch.long)
    bad_masks = [(torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]), ValueError, "left padding"),
                 (torch.tensor([[0, 1, 0, 1], [1, 1, 1, 1]]), ValueError, "left padding"),
                 (torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]), ValueError, "no token"),
                 (torch.ones(2, 3, dtype=torch.long), ValueError, "shape"),
                 (torch.tensor([[2, 1, 1, 1], [1, 1, 1, 1]]), ValueError, "0 .* and 1"),
                 (torch.ones(2, 4), TypeError, "attention_mask"), ([[1] * 4] * 2, TypeError, "attention_mask")]
    for mask, error, match in bad_masks:
        with pytest.raises(error, match=match):
            model.generate(ids, 2, attention_mask=mask)
    bad = [(dict(temperature=0.0), ValueError, "temperature"), (dict(temperature="1"), TypeError, "temperature"),
           (dict(top_k=-1), ValueError, "top_k"), (dict(top_k=2.0), ValueError, "top_k"),
           (dict(top_p=0.0), ValueError, "top_p"), (dict(top_p=1.5), ValueError, "top_p"),
           (dict(do_sample=1), TypeError, "do_sample"), (dict(generator=0), TypeError, "generator")]
    for kw, error, match in bad:
        with pytest.raises(error, match=match):
            model.generate(ids, 2, **kw)
    out = _gen(model, ids, 2, attention_mask=torch.ones_like(ids, dtype=torch.bool))  # bool masks work
    assert torch.equal(out, _gen(model, ids, 2))
