"""Training on our kernels: a training step equals Hugging Face's, and packed documents equal separate runs.

For each registered family's first tiny case (``tests/test_models.py`` builds it: random weights, no norm weight at
1, no bias at 0; OLMoE with 8 experts, top-2, as in ``tests/test_generate.py``), in fp32 on the CPU:

* the training step: ``loss = cross_entropy(model(ids), labels)`` and ``loss.backward()`` on our model and on HF's
  (eval mode: no dropout) give the same loss and the same gradient for every parameter. HF's gradients are mapped
  onto our parameters by the family's own loader (``from_checkpoint`` on a "checkpoint" of HF's gradients under
  HF's parameter names): it transposes GPT-2's Conv1D gradients and stacks OLMoE's experts exactly as it does the
  weights, it must take every HF gradient (none is left unused, so no HF parameter goes unchecked) and find one
  for every parameter of ours, and a tied LM head is one parameter on both sides whose gradient sums both uses.
* packed documents: ``model(ids, cu_seqlens=...)`` over documents laid end to end (positions restart per
  document, attention never crosses a boundary) gives each document's logits, the loss and the gradients of the
  documents run one by one, and of HF's model on the same packed row (its positions restarting, a block-diagonal
  causal mask); ``position_ids`` that restart (HF's convention) give the same logits as ``cu_seqlens``.

The error measure is ``||ours - ref|| / max(||ref||, FLOOR * ||every gradient of ref||)``: relative, except that a
gradient which is zero up to rounding is judged against the whole model's gradient norm. Such gradients exist:
a key bias adds ``q . b`` to every score of a query's row, which the softmax ignores, so its exact gradient is 0
and both sides hold rounding noise (~1e-8 against a total of ~4); a plain relative error would divide noise by
noise. TOL = 1e-4 is the kernels' own fp32 gradient tolerance (attention and layer_norm specs: 1e-4; MLP: 1e-5),
kept for the whole two-layer chain: measured errors are ~1e-6, while a wrong gradient is off by O(1), and
``test_a_wrong_weight_fails_the_check`` shows a 1e-3 change of one weight fails it.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from triton_playground import models
from triton_playground.kernels import _runtime as rt
from triton_playground.models._common import Checkpoint, read_config

transformers = pytest.importorskip("transformers")
from tests.test_generate import loaded, monkeypatch_module  # noqa: E402, F401  (fixtures: each family's first case)
from tests.test_models import FIRST, _shared  # noqa: E402

DEV = rt.DEVICE
TOL = 1e-4  # fp32 loss and gradients; see the module docstring
FLOOR = 1e-3  # a gradient under FLOOR x the whole model's gradient norm is judged against that
BATCH, SEQ = 2, 8


def _trainable(built):
    """Our model loaded from the case's folder, its parameters requiring grad (``from_pretrained`` freezes them)."""
    return models.from_pretrained(built.path).requires_grad_(True)


def _tokens(built, seed, shape):
    return torch.randint(0, built.vocab, shape, generator=torch.Generator().manual_seed(seed))


def _loss(logits, labels):
    """Mean cross-entropy over every token: logits (batch, seq, vocab), labels (batch, seq)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten().to(logits.device))


def _hf_grads_as_ours(built, ours) -> dict[str, torch.Tensor]:
    """HF's parameter gradients under our parameter names, in our layout, read by the family's loader.

    Every HF parameter must have a gradient (in these tiny models every one is used) and the loader must take
    all of them: an HF parameter no parameter of ours corresponds to fails here, as does one of ours with no HF
    counterpart (the loader's KeyError names it)."""
    hf_grads = {name: p.grad for name, p in built.hf.named_parameters()}
    assert not [name for name, g in hf_grads.items() if g is None], "HF parameters without a gradient"
    ckpt = Checkpoint(hf_grads, strip=built.family.STRIP, ignore=built.family.IGNORE)
    as_ours = built.family.from_checkpoint(read_config(built.path), ckpt, "cpu")
    assert ckpt.unused == [], f"HF gradients no parameter of ours took: {ckpt.unused}"
    ours_names = [name for name, _ in ours.named_parameters()]
    assert [name for name, _ in as_ours.named_parameters()] == ours_names
    return dict(as_ours.named_parameters())


def _grad_errors(model, ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """name -> the error of our gradient against ``ref[name]`` (the measure of the module docstring)."""
    total = torch.cat([g.detach().double().flatten() for g in ref.values()]).norm().item()
    errors = {}
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        r, g = ref[name].detach().double(), p.grad.detach().double().cpu()
        errors[name] = ((g - r).norm() / max(r.norm().item(), FLOOR * total)).item()
    return errors


def _rel(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm()).item()


def _training_step_errors(built, model, ids, labels) -> tuple[float, dict[str, float]]:
    """One step on both models: (the loss's relative error, each parameter's gradient error)."""
    built.hf.zero_grad(set_to_none=True)
    ref_loss = _loss(built.hf(ids).logits, labels)
    ref_loss.backward()
    loss = _loss(model(ids.to(DEV)), labels)
    loss.backward()
    return _rel(loss, ref_loss), _grad_errors(model, _hf_grads_as_ours(built, model))


@pytest.mark.parametrize("name", FIRST)
def test_training_step_equals_hf(loaded, name):
    built, _ = loaded(name)
    model = _trainable(built)
    hf_tied = built.hf.get_output_embeddings().weight is built.hf.get_input_embeddings().weight
    assert any("lm_head.weight" in group for group in _shared(model)) == hf_tied  # then one gradient, both uses
    loss_error, grad_errors = _training_step_errors(built, model, _tokens(built, 1, (BATCH, SEQ)),
                                                    _tokens(built, 2, (BATCH, SEQ)))
    worst = max(grad_errors, key=grad_errors.get)
    print(f"{name}: loss error {loss_error:.1e}, worst gradient {worst} {grad_errors[worst]:.1e}")
    assert loss_error < TOL
    assert grad_errors[worst] < TOL, {n: f"{e:.1e}" for n, e in grad_errors.items() if e >= TOL}


def test_a_wrong_weight_fails_the_check(loaded):
    """The check can fail: one weight matrix of ours off by 1e-3 (relative) gives gradient errors far above TOL."""
    built, _ = loaded(FIRST[0])
    model = _trainable(built)
    name = next(n for n, p in model.named_parameters() if p.dim() == 2 and ".0." in n)  # layer 0's first matrix
    with torch.no_grad():
        model.get_parameter(name).mul_(1 + 1e-3)
    _, grad_errors = _training_step_errors(built, model, _tokens(built, 1, (BATCH, SEQ)),
                                           _tokens(built, 2, (BATCH, SEQ)))
    assert max(grad_errors.values()) > 10 * TOL


# ------------------------------------------------------------------------------------------------ packed documents

DOCS = (5, 1, 7, 3)  # 16 tokens: the tiny GPT-2 / OPT position tables hold 16; a document of one token


def _cu_seqlens(lengths) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)


def _packed_mask(lengths) -> torch.Tensor:
    """HF's 4-D additive mask (1, 1, total, total) for documents of ``lengths`` packed in one row: causal within a
    document, nothing across. (HF's own packing from restarting ``position_ids`` is not in every family: its OPT
    ignores them for the mask.)"""
    document = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    i, j = torch.arange(len(document))[:, None], torch.arange(len(document))[None, :]
    allowed = (document[:, None] == document[None, :]) & (j <= i)
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[None, None]


@pytest.mark.parametrize("name", FIRST)
def test_packed_documents_equal_separate_runs_and_hf(loaded, name):
    """Documents packed in one row with ``cu_seqlens``: each document's logits, the loss (the mean over every
    token) and every gradient are those of the documents run one by one (the loss weighting each document's mean
    by its share of the tokens), and those of HF's model on the same packed row (HF marks documents by
    ``position_ids`` that restart). Positions restart per document: GPT-2's and OPT's learned tables (OPT's at
    its offset 2), Persimmon's partial and OLMoE's full RoPE. ``position_ids`` in place of ``cu_seqlens`` (HF's
    convention) give the same logits."""
    built, _ = loaded(name)
    model = _trainable(built)
    docs = [_tokens(built, 10 + i, (1, n)) for i, n in enumerate(DOCS)]
    labels = [_tokens(built, 20 + i, (1, n)) for i, n in enumerate(DOCS)]
    packed_ids, packed_labels, total = torch.cat(docs, dim=1), torch.cat(labels, dim=1), sum(DOCS)
    position_ids = torch.cat([torch.arange(n) for n in DOCS])[None]  # (1, total)

    separate_logits, separate_loss = [], 0.0
    for doc, doc_labels in zip(docs, labels):
        logits = model(doc.to(DEV))
        doc_loss = _loss(logits, doc_labels) * doc.shape[1] / total
        doc_loss.backward()  # the gradients accumulate over the documents
        separate_logits.append(logits.detach())
        separate_loss = separate_loss + doc_loss.detach()
    separate_logits = torch.cat(separate_logits, dim=1)
    separate_grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    logits = model(packed_ids.to(DEV), cu_seqlens=_cu_seqlens(DOCS).to(DEV))
    assert logits.shape == (1, total, built.vocab)
    loss = _loss(logits, packed_labels)
    loss.backward()
    built.hf.zero_grad(set_to_none=True)
    hf_logits = built.hf(packed_ids, attention_mask=_packed_mask(DOCS), position_ids=position_ids).logits
    _loss(hf_logits, packed_labels).backward()

    errors = {"logits vs separate": _rel(logits, separate_logits), "loss vs separate": _rel(loss, separate_loss),
              "logits vs HF": _rel(logits, hf_logits)}
    for ref_name, ref in (("separate", separate_grads), ("HF", _hf_grads_as_ours(built, model))):
        grad_errors = _grad_errors(model, ref)
        worst = max(grad_errors, key=grad_errors.get)
        errors[f"worst gradient vs {ref_name} ({worst})"] = grad_errors[worst]
    with torch.no_grad():
        errors["logits by position_ids"] = _rel(model(packed_ids.to(DEV), position_ids=position_ids.to(DEV)),
                                                logits)
    print(f"{name} packed: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) < TOL, errors


def test_packed_documents_with_a_sliding_window(loaded):
    """A sliding window counts a document's own keys: packed equals separate runs with the same window."""
    built, _ = loaded(FIRST[0])
    model = models.from_pretrained(built.path, window=2)
    docs = [_tokens(built, 30 + i, (1, n)) for i, n in enumerate(DOCS)]
    with torch.no_grad():
        packed = model(torch.cat(docs, dim=1).to(DEV), cu_seqlens=_cu_seqlens(DOCS).to(DEV))
        separate = torch.cat([model(doc.to(DEV)) for doc in docs], dim=1)
    assert _rel(packed, separate) < TOL


def test_packed_documents_bad_arguments(loaded):
    built, _ = loaded(FIRST[0])
    model = models.from_pretrained(built.path)
    ids = _tokens(built, 40, (1, 6)).to(DEV)
    for bad in ([0, 2, 6], torch.tensor([0, 2, 6.0]), torch.tensor([[0, 6]]), torch.tensor([6])):
        with pytest.raises(ValueError, match="cu_seqlens must be a 1-D integer tensor"):
            model(ids, cu_seqlens=bad)
    for bad in ([1, 6], [0, 5], [0, 7], [0, 3, 3, 6], [0, 4, 2, 6]):  # not from 0, not to the end, empty, backwards
        with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
            model(ids, cu_seqlens=torch.tensor(bad, dtype=torch.int32, device=DEV))
    with pytest.raises(ValueError, match="one row"):
        model(ids.expand(2, -1), cu_seqlens=_cu_seqlens([6]).to(DEV))
    with pytest.raises(ValueError, match="KV cache"):
        model(ids, cache=model.new_cache(1, 8), cu_seqlens=_cu_seqlens([6]).to(DEV))
    with pytest.raises(ValueError, match="not both"):
        model(ids, cu_seqlens=_cu_seqlens([6]).to(DEV), position_ids=torch.arange(6, device=DEV))
    for bad in (torch.arange(5), torch.arange(6.0), torch.arange(6)[None].expand(2, -1), torch.arange(-1, 5)):
        with pytest.raises(ValueError, match="position_ids must be"):
            model(ids, position_ids=bad.to(DEV))
    # the longest document, not the row, must fit the position table
    long_row = _tokens(built, 41, (1, model.max_positions + 4)).to(DEV)
    model(long_row, cu_seqlens=_cu_seqlens([model.max_positions, 4]).to(DEV))
    with pytest.raises(ValueError, match="packed document reaches position .* longer than the model's"):
        model(long_row, cu_seqlens=_cu_seqlens([2, model.max_positions + 2]).to(DEV))
