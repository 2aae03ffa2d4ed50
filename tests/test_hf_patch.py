"""``models.patch_hf`` on live Hugging Face models (each family's first tiny case, fp32): logits, HF's own
``generate``, gradients and the sliding window against the unpatched model; which of our ops run (recorded at
the dispatcher); what stays unchanged (weights, state dict, config); what is refused."""

from __future__ import annotations

import copy

import pytest
import torch

from triton_playground import models
from triton_playground.kernels import _runtime as rt

transformers = pytest.importorskip("transformers")
from tests.test_models import CASES, FIRST, _perturb, _rel, _window_mask  # noqa: E402

TOL = 1e-4
DEV = rt.DEVICE
# the ops (torch.ops.playground.*) each family runs when fully patched (forward)
OPS = {"gpt2": {"attention", "layer_norm", "mlp"}, "opt": {"attention", "layer_norm", "mlp"},
       "persimmon": {"attention", "layer_norm", "mlp"}, "olmoe": {"attention", "rms_norm", "moe"}}


def _hf(name):
    """The case's HF model, as tests/test_models.py builds it (seeded, perturbed, sdpa, eval), on the kernels' device.
    OLMoE's cases get 8 experts, top-2, instead of 64, top-8: the interpreter runs the MoE kernels per expert block,
    and their own tests (and test_models.py) cover 64."""
    family, case = CASES[name]
    seed = list(CASES).index(name)
    torch.manual_seed(seed)
    config = copy.deepcopy(case.config)
    if config.model_type == "olmoe":
        config.num_experts, config.num_experts_per_tok = 8, 2
    hf = _perturb(getattr(transformers, family.HF_MODEL)(config), seed).eval()
    hf.config._attn_implementation = "sdpa"
    return hf.to(DEV)


@pytest.fixture(scope="module")
def pair():
    """name -> (the HF model, a patched deep copy of it)."""
    cache = {}

    def get(name, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in cache:
            hf = _hf(name)
            cache[key] = hf, models.patch_hf(copy.deepcopy(hf), **options)
        return cache[key]

    return get


def _ids(hf, seed, batch=2, seq=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, hf.config.vocab_size, (batch, seq), generator=g).to(DEV)


def _ops_run(fn):
    """``fn()`` and the names of the ``torch.ops.playground`` ops it called (on the CPU and on a GPU alike)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "playground":
                seen.add(func._opname)
            return func(*args, **(kwargs or {}))

    with Record():
        out = fn()
    return out, seen


@pytest.mark.parametrize("name", FIRST)
def test_patched_logits_match_and_nothing_else_changes(pair, name):
    hf, patched = pair(name)
    ids = _ids(hf, 1)
    state, config = hf.state_dict(), hf.config.to_dict()
    with torch.no_grad():
        ref = hf(ids).logits
        out, ran = _ops_run(lambda: patched(ids).logits)
    assert _rel(out, ref) < TOL
    assert ran == OPS[hf.config.model_type]
    assert patched.config.to_dict() == config and type(patched) is type(hf)
    patched_state = patched.state_dict()
    assert list(patched_state) == list(state) and all(torch.equal(patched_state[k], state[k]) for k in state)
    assert any(type(m).__name__.startswith("Playground") for m in patched.modules())


@pytest.mark.parametrize("name", FIRST)
def test_hf_generate_gives_the_same_tokens(pair, name):
    hf, patched = pair(name)
    prompt = _ids(hf, 2, seq=5)
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False, eos_token_id=None)
    ref = hf.generate(prompt, **kw)
    out, ran = _ops_run(lambda: patched.generate(prompt, **kw))
    assert torch.equal(out, ref) and "attention" in ran


@pytest.mark.parametrize("name", FIRST)
def test_left_padding_falls_back_to_hf_attention(pair, name):
    """A padding mask is more than our causal kernel computes: that call runs the model's own attention (sdpa);
    norms and MLPs stay ours. Logits of the real tokens and HF's generate on the padded batch as unpatched."""
    hf, patched = pair(name)
    ids = _ids(hf, 3, batch=2, seq=8)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        out, ran = _ops_run(lambda: patched(ids, attention_mask=mask).logits)
    assert "attention" not in ran and ran & {"layer_norm", "rms_norm"}
    assert _rel(out[0, 3:], ref[0, 3:]) < TOL and _rel(out[1], ref[1]) < TOL
    kw = dict(attention_mask=mask, max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(patched.generate(ids, **kw), hf.generate(ids, **kw))


@pytest.mark.parametrize("name", FIRST)
def test_training_step_gives_the_same_gradients(pair, name):
    """loss.backward() through the patched model: every parameter's gradient as HF's. Attention, norms and MLPs
    run our backward kernels; OLMoE's MoE block runs HF's own code while gradients are needed (kernels.moe has no
    backward yet), its router and experts' gradients included in the comparison."""
    hf, patched = pair(name)
    ids = _ids(hf, 4, seq=8)
    grads = []
    for model in (hf, patched):
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    _, ran = _ops_run(lambda: patched(ids, labels=ids).loss.backward())
    assert {"attention_backward", "norm_backward"} <= ran
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(hf.parameters()))
    for n, g in grads[0].items():
        assert _rel(grads[1][n], g) < TOL, n


@pytest.mark.parametrize("name", [n for n, (_, case) in CASES.items() if case.window is not None and n in FIRST])
def test_window_matches_hf_with_a_windowed_mask(pair, name):
    hf, patched = pair(name, window=CASES[name][1].window)
    window = CASES[name][1].window
    ids = _ids(hf, 5)
    with torch.no_grad():
        ref = hf(ids, attention_mask=_window_mask(ids, window).to(DEV)).logits
        out, ran = _ops_run(lambda: patched(ids).logits)
        assert _rel(out, ref) < TOL and "attention" in ran
        # with a padding mask: HF's attention on the padding mask narrowed to the window
        mask = torch.ones_like(ids)
        mask[1, :2] = 0
        full = _window_mask(ids, window).to(DEV).masked_fill(mask[:, None, None, :] == 0, float("-inf"))
        ref, out = hf(ids, attention_mask=full).logits, patched(ids, attention_mask=mask).logits
    assert _rel(out[0], ref[0]) < TOL and _rel(out[1, 2:], ref[1, 2:]) < TOL


def test_parts_are_chosen():
    """Each part patched alone runs its kernels alone; base models are patched too."""
    hf = _hf("gpt2")
    ids = _ids(hf, 6)
    with torch.no_grad():
        ref = hf(ids).logits
        for part, expected in (("attention", {"attention"}), ("norm", {"layer_norm"}), ("mlp", {"mlp"})):
            options = dict(attention=False, norm=False, mlp=False, moe=False) | {part: True}
            patched = models.patch_hf(copy.deepcopy(hf), **options)
            out, ran = _ops_run(lambda: patched(ids).logits)
            assert _rel(out, ref) < TOL and ran == expected, part
        base = models.patch_hf(copy.deepcopy(hf.transformer))
        out, ran = _ops_run(lambda: base(ids).last_hidden_state)
        assert _rel(out, hf.transformer(ids).last_hidden_state) < TOL and "attention" in ran


def test_patching_twice_changes_only_the_window(pair):
    hf, patched = pair("gpt2")
    again = models.patch_hf(copy.deepcopy(patched), window=3)
    ids = _ids(hf, 7)
    with torch.no_grad():
        assert _rel(again(ids).logits, hf(ids, attention_mask=_window_mask(ids, 3).to(DEV)).logits) < TOL
    assert {type(m).__name__ for m in again.modules()} == {type(m).__name__ for m in patched.modules()}


def test_other_models_and_bad_options_are_refused():
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=32))
    for model in (llama, torch.nn.Linear(2, 2)):
        with pytest.raises(TypeError, match="GPT2LMHeadModel.*OPTForCausalLM.*PersimmonForCausalLM.*OlmoeForCausalLM"):
            models.patch_hf(model)
    hf = _hf("gpt2")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="window"):
            models.patch_hf(hf, window=bad)
    with pytest.raises(ValueError, match="attention=True"):
        models.patch_hf(hf, attention=False, window=4)
    hf.config.activation_function = "gelu"
    with pytest.raises(NotImplementedError, match="mlp=False"):
        models.patch_hf(hf)
    assert not any(type(m).__name__.startswith("Playground") for m in hf.modules())  # refused before any change
