"""The four model files against Hugging Face transformers, on tiny random checkpoints, in fp32 on the CPU.

Every case builds a transformers model from a config (random init, large enough that attention is not uniform),
perturbs it so no norm weight is 1 and no bias is 0, writes it with ``save_pretrained`` (some sharded), loads it
with ``models.from_pretrained`` and checks: logits within 1e-4 relative error of HF's; greedy generation (with
our KV cache) token for token equal to an argmax loop over HF's full forward; sliding windows against HF with an
explicit windowed mask. Sizes are tiny (2 layers, hidden <= 64, vocab <= 128, seq <= 12) because every kernel
runs under the Triton interpreter; OLMoE keeps its 64 experts, top-8.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch

import models

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

TOL = 1e-4  # fp32: ||ours - hf|| / ||hf||
VOCAB, SEQ, BATCH = 96, 10, 2


# ------------------------------------------------------------------------------------------------ the cases


def _gpt2():  # head_dim 24; scores also scaled by 1/(layer+1)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=48, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=16, initializer_range=0.2,
        scale_attn_by_inverse_layer_idx=True))


def _opt_pre():  # pre-LN, head_dim 16, no linear biases (enable_bias=False: the kernels get bias None)
    return transformers.OPTForCausalLM(transformers.OPTConfig(
        hidden_size=32, num_hidden_layers=2, ffn_dim=48, num_attention_heads=2, vocab_size=VOCAB,
        max_position_embeddings=16, init_std=0.2, enable_bias=False))


def _opt_post():  # opt-350m's layout: post-LN, project_in/out (embed 24, hidden 40), head_dim 20
    return transformers.OPTForCausalLM(transformers.OPTConfig(
        hidden_size=40, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2, vocab_size=VOCAB,
        max_position_embeddings=16, init_std=0.2, do_layer_norm_before=False, word_embed_proj_dim=24))


def _persimmon():  # qk-LayerNorm, head_dim 20 with rotary_dim 10, theta 25000
    return transformers.PersimmonForCausalLM(transformers.PersimmonConfig(
        hidden_size=40, num_hidden_layers=2, intermediate_size=64, num_attention_heads=2, vocab_size=VOCAB,
        initializer_range=0.2, rope_parameters={"rope_type": "default", "rope_theta": 25000.0,
                                                "partial_rotary_factor": 0.5}))


def _olmoe(**kw):  # 64 experts, top-8, GQA (4 query heads, 2 kv heads), head_dim 16
    return transformers.OlmoeForCausalLM(transformers.OlmoeConfig(
        hidden_size=64, num_hidden_layers=2, intermediate_size=8, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, num_experts=64, num_experts_per_tok=8, initializer_range=0.2, **kw))


# name -> (HF model builder, save_pretrained kwargs)
CASES = {
    "gpt2": (_gpt2, {"max_shard_size": "40KB"}),
    "opt_pre_ln": (_opt_pre, {}),
    "opt_post_ln_proj": (_opt_post, {}),
    "persimmon": (_persimmon, {}),
    "olmoe_clip_norm_topk": (lambda: _olmoe(clip_qkv=0.6, norm_topk_prob=True), {"max_shard_size": "100KB"}),
    "olmoe": (lambda: _olmoe(norm_topk_prob=False), {}),
}


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
        build, save_kwargs = CASES[name]
        seed = list(CASES).index(name)
        torch.manual_seed(seed)
        self.hf = _perturb(build(), seed=seed).eval()
        self.hf.config._attn_implementation = "sdpa"
        self.path = os.path.join(root, name)
        self.hf.save_pretrained(self.path, **save_kwargs)
        if name == "persimmon":  # older config.json spelling: rope_theta, partial_rotary_factor at the top level
            _edit_config(self.path, _old_rope_keys)

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


def _old_rope_keys(cfg):
    rope = cfg.pop("rope_parameters")
    cfg.update(rope_theta=rope["rope_theta"], partial_rotary_factor=rope["partial_rotary_factor"])


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


def _ids(seed, batch=BATCH, seq=SEQ):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_hf(built, name):
    case = built(name)
    model = models.from_pretrained(case.path)
    assert model.unused_weights == []
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    ids = _ids(1)
    ours, ref = model(ids), case.logits(ids)
    assert ours.shape == ref.shape == (BATCH, SEQ, VOCAB)
    assert _rel(ours, ref) < TOL


@pytest.mark.parametrize("name", ["gpt2", "opt_post_ln_proj", "persimmon", "olmoe_clip_norm_topk"])
def test_generate_matches_hf_greedy(built, name):
    case = built(name)
    model = models.from_pretrained(case.path)
    prompt = _ids(2, seq=5)
    out = model.generate(prompt, max_new_tokens=4)
    assert out.shape == (BATCH, 9) and torch.equal(out[:, :5], prompt)
    assert torch.equal(out, case.greedy(prompt, 4))


def _first_index(tokens, token) -> int:
    """Where ``token`` first occurs in the 1-D ``tokens`` (``len(tokens)`` when it does not)."""
    hits = (tokens == token).nonzero()
    return hits[0, 0].item() if len(hits) else len(tokens)


@pytest.mark.parametrize("name", ["persimmon", "opt_pre_ln", "gpt2", "olmoe"])
def test_generate_stops_at_eos_like_hf(built, name, tmp_path):
    """eos from the checkpoint (one row finishes, is padded, the other goes on) and from the keyword (a list: every
    row finishes, decoding stops early), each token for token HF's ``generate(do_sample=False)``, padding too."""
    case = built(name)
    n_new, prompt = 6, _ids(7, seq=4) % (VOCAB - 3) + 3  # no ids 0..2: HF would mask a pad token in the prompt
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
    from models._common import read_generation_tokens

    cfg = {"eos_token_id": 2, "pad_token_id": 1}
    assert read_generation_tokens(tmp_path, cfg) == ([2], 1)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    assert read_generation_tokens(tmp_path, cfg) == ([7, 9], 1)
    assert read_generation_tokens(tmp_path, {}) == ([7, 9], None)


@pytest.mark.parametrize("name,window", [("gpt2", 3), ("persimmon", 4), ("olmoe", 5)])
def test_sliding_window_matches_hf_mask(built, name, window):
    case = built(name)
    model = models.from_pretrained(case.path, window=window)
    ids = _ids(3)
    assert _rel(model(ids), case.logits(ids, window)) < TOL
    if name == "gpt2":  # decode steps with q_len < kv_len also honour the window
        prompt = ids[:, :5]
        assert torch.equal(model.generate(prompt, 4), case.greedy(prompt, 4, window))


def test_window_wider_than_sequence_is_full_attention(built):
    case = built("opt_pre_ln")
    ids = _ids(4)
    full, wide = models.from_pretrained(case.path), models.from_pretrained(case.path, window=SEQ + 3)
    assert _rel(wide(ids), full(ids)) < 1e-6


def test_fp16_weights(built):
    case = built("gpt2")
    model = models.from_pretrained(case.path, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in model.parameters())
    ids = _ids(5)
    assert _rel(model(ids).float(), case.logits(ids)) < 1e-2


# ------------------------------------------------------------------------------------------------ loading


def _state(model):
    return {k: v for k, v in model.state_dict().items()}


def _rewrite(path, edit):
    """Apply ``edit`` to the tensors of a single-file checkpoint folder."""
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    tensors = edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, file, metadata={"format": "pt"})


def test_olmoe_fused_expert_layout_loads_the_same(built, tmp_path):
    """transformers 5 keeps the per-expert names on save; the fused 3-D layout must give the same model."""
    case = built("olmoe")
    fused = str(tmp_path / "fused")
    shutil.copytree(case.path, fused)
    n_experts, n_layers = case.hf.config.num_experts, case.hf.config.num_hidden_layers

    def fuse(t):
        for layer in range(n_layers):
            p = f"model.layers.{layer}.mlp.experts."
            gate = torch.stack([t.pop(f"{p}{e}.gate_proj.weight") for e in range(n_experts)])
            up = torch.stack([t.pop(f"{p}{e}.up_proj.weight") for e in range(n_experts)])
            t[p + "gate_up_proj"] = torch.cat([gate, up], dim=1)
            t[p + "down_proj"] = torch.stack([t.pop(f"{p}{e}.down_proj.weight") for e in range(n_experts)])
        return t

    _rewrite(fused, fuse)
    a, b = _state(models.from_pretrained(case.path)), _state(models.from_pretrained(fused))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the stacking matches HF's own fused parameters
    experts = case.hf.model.layers[1].mlp.experts
    assert torch.equal(a["layers.1.mlp.experts.gate_up_proj"], experts.gate_up_proj)
    assert torch.equal(a["layers.1.mlp.experts.down_proj"], experts.down_proj)


def test_gpt2_original_names_load_the_same(built, tmp_path):
    """OpenAI-converted GPT-2 files name tensors without ``transformer.`` and carry ``attn.bias`` buffers."""
    case = built("gpt2")
    original = str(tmp_path / "original")
    os.makedirs(original)
    shutil.copy(os.path.join(case.path, "config.json"), original)
    tensors = {}
    for f in os.listdir(case.path):
        if f.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(case.path, f)))
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    tensors["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
    save_file(tensors, os.path.join(original, "model.safetensors"))
    a, b = models.from_pretrained(case.path), models.from_pretrained(original)
    assert b.unused_weights == []
    assert all(torch.equal(x, y) for x, y in zip(_state(a).values(), _state(b).values()))
    assert b.lm_head.weight is b.wte.weight  # tied


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="llama"):
        models.from_pretrained(tmp_path)


def test_missing_folder_or_weights(built, tmp_path):
    with pytest.raises(FileNotFoundError):
        models.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.from_pretrained(tmp_path)
    case = built("opt_pre_ln")
    shutil.copy(os.path.join(case.path, "config.json"), tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        models.from_pretrained(tmp_path)
    sharded = tmp_path / "sharded"
    shutil.copytree(built("gpt2").path, sharded)
    os.remove(sharded / "model-00002-of-{:05d}.safetensors".format(
        len([f for f in os.listdir(sharded) if f.startswith("model-")])))
    with pytest.raises(FileNotFoundError, match="model-00002"):
        models.from_pretrained(sharded)


def test_bad_weight_shape_names_the_tensor(built, tmp_path):
    path = str(tmp_path / "bad")
    shutil.copytree(built("opt_pre_ln").path, path)
    name = "model.decoder.layers.1.fc1.weight"
    _rewrite(path, lambda t: t | {name: t[name][:-1]})
    with pytest.raises(ValueError, match=r"layers\.1\.fc1\.weight"):
        models.from_pretrained(path)
    # the same when the config is the one that disagrees
    shutil.rmtree(path)
    shutil.copytree(built("opt_pre_ln").path, path)
    _edit_config(path, lambda c: c.update(ffn_dim=50))
    with pytest.raises(ValueError, match=r"layers\.0\.fc1\.weight"):
        models.from_pretrained(path)
    _edit_config(path, lambda c: c.update(ffn_dim=48))
    _rewrite(path, lambda t: {k: v for k, v in t.items() if "layers.1.self_attn.k_proj" not in k})
    with pytest.raises(KeyError, match=r"layers\.1\.self_attn\.k_proj\.weight"):
        models.from_pretrained(path)


def test_bad_arguments(built):
    path = built("opt_pre_ln").path
    with pytest.raises(ValueError, match="window"):
        models.from_pretrained(path, window=0)
    with pytest.raises(TypeError, match="dtype"):
        models.from_pretrained(path, dtype=torch.int32)
    model = models.from_pretrained(path)
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="positions"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_bad_generate_arguments(built):
    model = models.from_pretrained(built("opt_pre_ln").path)
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
    for name, file in (("opt_pre_ln", "model.safetensors"), ("gpt2", "model-00002-of-")):
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
    path = built("opt_pre_ln").path
    for device in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ValueError, match=r"torch\.cuda\.is_available\(\) is False on this machine"):
            models.from_pretrained(path, device=device)
    with pytest.raises(ValueError, match="device='gpu' is not a torch device"):
        models.from_pretrained(path, device="gpu")


def test_bfloat16_refused_under_the_interpreter(built, tmp_path, monkeypatch):
    """The interpreter's tl.dot reads bf16 bits as integers: a bf16 model there must be refused at load time."""
    import kernels._runtime

    monkeypatch.setattr(kernels._runtime, "INTERPRET", True)  # what a machine without a GPU has
    path = built("opt_pre_ln").path
    with pytest.raises(TypeError, match=r"bfloat16.*Triton interpreter.*dtype=torch\.float32"):
        models.from_pretrained(path, dtype=torch.bfloat16)
    bf16 = str(tmp_path / "bf16")
    shutil.copytree(path, bf16)
    _rewrite(bf16, lambda t: {k: v.to(torch.bfloat16) for k, v in t.items()})
    with pytest.raises(TypeError, match=r"bfloat16.*Triton interpreter.*dtype=torch\.float32"):
        models.from_pretrained(bf16)
    model = models.from_pretrained(bf16, dtype=torch.float32)  # the suggested way out works
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_loading_needs_no_transformers():
    """The model files import torch, safetensors and kernels only (transformers is a test dependency)."""
    import ast

    root = os.path.dirname(models.__file__)
    for file in ("__init__.py", "_common.py", "gpt2.py", "opt.py", "persimmon.py", "olmoe.py"):
        with open(os.path.join(root, file)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "transformers" for n in names), f"{file} imports transformers"
