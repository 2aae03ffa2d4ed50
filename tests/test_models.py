"""Every registered model family against Hugging Face transformers, on tiny random checkpoints, in fp32 on the CPU.

One harness for all families: the cases are each family's ``tiny_cases()`` (models/registry.py says what a
family file provides), so a new family is checked as soon as it is registered. Every case builds a transformers
model from its config (random init, large enough that attention is not uniform), perturbs it so no norm weight is
1 and no bias is 0, writes it with ``save_pretrained`` (some sharded), loads it with ``models.from_pretrained``
and checks logits within 1e-4 relative error of HF's; a case's ``checks`` add greedy generation (with our KV
cache) token for token equal to an argmax loop over HF's full forward, eos stopping as HF's ``generate``, sliding
windows against HF with an explicit windowed mask, fp16; its ``layouts`` other ways to store the same weights.
Sizes are tiny (2 layers, hidden <= 64, vocab <= 128, seq <= 12) because every kernel runs under the Triton
interpreter. The loading errors are checked on every family where they go through its own loader, else once.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from triton_playground import models
from triton_playground.models import registry

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

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


# ------------------------------------------------------------------------------------------------ loading


def _tensors(path):
    """Every tensor of a checkpoint folder, one file or shards."""
    tensors = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(path, f)))
    return tensors


def _rewrite(path, edit):
    """Apply ``edit`` to the tensors of a checkpoint folder, which becomes one ``model.safetensors``."""
    tensors = edit(_tensors(path))
    for f in os.listdir(path):
        if f.endswith(".safetensors") or f == "model.safetensors.index.json":
            os.remove(os.path.join(path, f))
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})


@pytest.mark.parametrize("name,layout", [(name, layout) for name, (_, case) in CASES.items()
                                         for layout in case.layouts])
def test_other_layouts_load_the_same(built, name, layout, tmp_path):
    """Another way checkpoints of the family store the same weights (GPT-2's original names with its mask buffers,
    OLMoE's fused experts as HF holds them) loads to the very same model, every tensor used, ties kept."""
    case = built(name)
    folder = str(tmp_path / layout)
    os.makedirs(folder)
    shutil.copy(os.path.join(case.path, "config.json"), folder)
    save_file(case.case.layouts[layout](_tensors(case.path), case.hf), os.path.join(folder, "model.safetensors"))
    a, b = models.from_pretrained(case.path), models.from_pretrained(folder)
    assert b.unused_weights == []
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _shared(b) == _shared(a)


def test_unknown_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="llama"):
        models.from_pretrained(tmp_path)


def test_missing_folder_or_weights(built, tmp_path):
    with pytest.raises(FileNotFoundError):
        models.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.from_pretrained(tmp_path)
    shutil.copy(os.path.join(built(ONE_FILE).path, "config.json"), tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        models.from_pretrained(tmp_path)
    sharded = tmp_path / "sharded"
    shutil.copytree(built(SHARDED).path, sharded)
    os.remove(sharded / "model-00002-of-{:05d}.safetensors".format(
        len([f for f in os.listdir(sharded) if f.startswith("model-")])))
    with pytest.raises(FileNotFoundError, match="model-00002"):
        models.from_pretrained(sharded)


@pytest.mark.parametrize("name", FIRST)
def test_bad_weight_shape_names_the_tensor(built, name, tmp_path):
    """Through the family's own loader: a tensor of the wrong shape, a config that disagrees with the weights, and
    a missing tensor are each an error naming the tensor (as our module names it)."""
    case = built(name)

    def ours(checkpoint_name):  # the name after the family's STRIP
        prefix = next((p for p in case.family.STRIP if checkpoint_name.startswith(p)), "")
        return re.escape(checkpoint_name[len(prefix):])

    # weights of layer 1 (or expert 1), as the checkpoint names them: the first is cut short, the last goes missing
    layer_1 = sorted(n for n, t in _tensors(case.path).items() if t.dim() == 2 and ".1." in n)
    path = str(tmp_path / "bad")
    shutil.copytree(case.path, path)
    _rewrite(path, lambda t: t | {layer_1[0]: t[layer_1[0]][:-1]})
    with pytest.raises(ValueError, match=ours(layer_1[0])):
        models.from_pretrained(path)
    # the same when the config is the one that disagrees: the embedding is the first tensor taken
    shutil.rmtree(path)
    shutil.copytree(case.path, path)
    embedding = next(n for n, p in models.from_pretrained(path).named_parameters() if case.vocab in p.shape)
    _edit_config(path, lambda c: c.update(vocab_size=case.vocab + 1))
    with pytest.raises(ValueError, match=re.escape(embedding)):
        models.from_pretrained(path)
    _edit_config(path, lambda c: c.update(vocab_size=case.vocab))
    _rewrite(path, lambda t: {k: v for k, v in t.items() if k != layer_1[-1]})
    with pytest.raises(KeyError, match=ours(layer_1[-1])):
        models.from_pretrained(path)


def test_bad_arguments(built):
    path = built(ONE_FILE).path
    with pytest.raises(ValueError, match="window"):
        models.from_pretrained(path, window=0)
    with pytest.raises(TypeError, match="dtype"):
        models.from_pretrained(path, dtype=torch.int32)
    model = models.from_pretrained(path)
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(3, dtype=torch.long))
    assert model.max_positions is not None  # a learned position table
    with pytest.raises(ValueError, match="positions"):
        model(torch.zeros(1, model.max_positions + 1, dtype=torch.long))


def test_bad_generate_arguments(built):
    model = models.from_pretrained(built(ONE_FILE).path)
    prompt = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="input_ids is empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="input_ids is empty"):
        model.generate(torch.zeros(0, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="input_ids must be 2-D"):
        model.generate(torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="input_ids must be 2-D"):
        model.generate(torch.zeros(1, 2, 3, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="input_ids must hold integer"):
        model.generate(torch.zeros(1, 3), 2)
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        model.generate([[1, 2, 3]], 2)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        model.generate(prompt, -1)
    for bad in (2.0, "2", True, None):
        with pytest.raises(TypeError, match="max_new_tokens must be an int"):
            model.generate(prompt, bad)
    with pytest.raises(TypeError, match="eos_token_id"):
        model.generate(prompt, 2, eos_token_id="2")
    with pytest.raises(ValueError, match="eos_token_id"):
        model.generate(prompt, 2, eos_token_id=[3, -1])
    with pytest.raises(TypeError, match="pad_token_id"):
        model.generate(prompt, 2, pad_token_id=1.0)


def test_truncated_safetensors_names_the_file(built, tmp_path):
    for name, file in ((ONE_FILE, "model.safetensors"), (SHARDED, "model-00002-of-")):
        folder = tmp_path / name
        shutil.copytree(built(name).path, folder)
        path = next(folder / f for f in sorted(os.listdir(folder)) if f.startswith(file))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # an interrupted download
        with pytest.raises(OSError, match=re.escape(str(path))):
            models.from_pretrained(folder)


def test_cuda_device_without_cuda_is_one_clear_error(built, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # refused before any weights are read
    monkeypatch.setattr(models, "load_safetensors", lambda path: pytest.fail("weights were read"))
    path = built(ONE_FILE).path
    for device in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ValueError, match=r"torch\.cuda\.is_available\(\) is False on this machine"):
            models.from_pretrained(path, device=device)
    with pytest.raises(ValueError, match="device='gpu' is not a torch device"):
        models.from_pretrained(path, device="gpu")


def test_bfloat16_refused_under_the_interpreter(built, tmp_path, monkeypatch):
    """The interpreter's tl.dot reads bf16 bits as integers: a bf16 model there must be refused at load time."""
    from triton_playground.kernels import _runtime

    monkeypatch.setattr(_runtime, "INTERPRET", True)  # what a machine without a GPU has
    path = built(ONE_FILE).path
    with pytest.raises(TypeError, match=r"bfloat16.*Triton interpreter.*dtype=torch\.float32"):
        models.from_pretrained(path, dtype=torch.bfloat16)
    bf16 = str(tmp_path / "bf16")
    shutil.copytree(path, bf16)
    _rewrite(bf16, lambda t: {k: v.to(torch.bfloat16) for k, v in t.items()})
    with pytest.raises(TypeError, match=r"bfloat16.*Triton interpreter.*dtype=torch\.float32"):
        models.from_pretrained(bf16)
    model = models.from_pretrained(bf16, dtype=torch.float32)  # the suggested way out works
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _imports_run_on_import(tree):
    """The modules a file imports when it is imported (function bodies are not run then)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module or ""
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def test_loading_needs_no_transformers(built):
    """transformers and hypothesis are test and sweep dependencies: no file of models/ imports them at its top
    (the family files' sweep and test functions import transformers inside), and without transformers every
    family file imports and a checkpoint loads."""
    root = os.path.dirname(models.__file__)
    for file in sorted(f for f in os.listdir(root) if f.endswith(".py")):
        with open(os.path.join(root, file)) as f:
            names = list(_imports_run_on_import(ast.parse(f.read())))
        assert not any(n.split(".")[0] in ("transformers", "hypothesis") for n in names), \
            f"models/{file} imports {names} at its top"
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from triton_playground import models\nimport triton_playground.models.registry as r\n"
            "[r.family(t) for t in r.FAMILIES]\n"
            f"models.from_pretrained({built(ONE_FILE).path!r})\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=os.path.dirname(root))
    assert result.returncode == 0, result.stderr[-2000:]
