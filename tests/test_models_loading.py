"""Loading checkpoints, on the tiny cases of tests/test_models.py (its harness and its ``built`` fixture): other
layouts of the same weights load to the same model; the loading errors, checked on every family where they go
through its own loader, else once; loading needs no transformers.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from triton_playground import models

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from tests import test_models as harness  # noqa: E402
from tests.test_models import CASES, FIRST, ONE_FILE, SHARDED, _edit_config, _shared, _state  # noqa: E402

built = harness.built  # the checkpoints fixture (module scope: this module builds the cases it uses)


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
