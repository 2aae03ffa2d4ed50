"""Model-level sweeps: forward tokens/s of a whole model versus sequence length, ours against Hugging Face.

One :class:`kernels.spec.OpSpec` per registered family (``model_<model_type>``, see ``models/registry.py``),
forward only. A case is a *bundle*, our model and the HF model holding the same random weights (built from the
family's ``sweep_config``, written with ``save_pretrained`` to a temporary folder and read back with
:func:`models.from_pretrained`), plus ``input_ids``. Providers: ``ours`` (``spec.fn``), ``eager`` (HF with
its SDPA attention, ``spec.reference``) and the peer ``hf_compile`` (``torch.compile`` of the HF model).

Sizes (each family's ``SWEEP_SHAPES``): on a GPU, a few layers of a real model's shapes (full vocab), batch 1,
sequence 512..4096; on the CPU interpreter, tiny configs (one forward well under a second or two).
These specs are not in ``kernels.OPS``: the generated op tests do not run them (tests/test_models.py checks the
models). transformers is imported only when a case is built.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import tempfile

import torch

from triton_playground.kernels.spec import Case, OpSpec

from . import registry

TOLERANCE = {torch.float32: 1e-4}  # model-level: ||ours - hf|| / ||hf|| in fp32 (see tests/test_models.py)

GPU_SEQLENS = (512, 1024, 2048, 4096)
CPU_SEQLENS = (8, 16, 32)
MAX_POSITIONS = max(GPU_SEQLENS)  # learned position tables are sized for the longest sweep sequence


def _hf_config(family: str, d: dict):
    # the tiny vocab lacks the real special-token ids (transformers warns about them): point them inside it
    ids = {} if d["vocab"] > 50_000 else dict(bos_token_id=1, eos_token_id=1, pad_token_id=0)
    cfg = registry.family(family).sweep_config(d, MAX_POSITIONS, **ids)
    cfg._attn_implementation = "sdpa"
    return cfg


@dataclasses.dataclass
class Bundle:
    """Our model and the HF model, same weights."""

    ours: torch.nn.Module
    hf: torch.nn.Module
    compiled: torch.nn.Module | None = None


_cached: dict = {}  # one bundle at a time: real-size models are GBs each


def _bundle(family: str, model_dims: tuple, dtype, device, seed: int) -> Bundle:
    key = (family, model_dims, dtype, str(device), seed)
    if key not in _cached:
        _cached.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        import transformers as tf

        from triton_playground import models

        tf.utils.logging.disable_progress_bar()  # the sweep's own bar is the progress report
        torch.manual_seed(seed)
        with torch.device(device):  # random init where the model will run (fast on a GPU)
            hf = getattr(tf, registry.family(family).HF_MODEL)(_hf_config(family, dict(model_dims)))
        hf = hf.to(dtype=dtype).eval()
        with tempfile.TemporaryDirectory() as folder:
            hf.save_pretrained(folder)
            ours = models.from_pretrained(folder, dtype=dtype, device=device)
        _cached[key] = Bundle(ours, hf)
    return _cached[key]


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0, family):
    """Case((bundle, input_ids)); the bundle is built once per model shape, dtype and device."""
    model_dims = tuple(sorted((k, v) for k, v in dims.items() if k not in ("seqlen", "batch")))
    bundle = _bundle(family, model_dims, dtype, device, seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, dims["vocab"], (dims["batch"], dims["seqlen"]), generator=g).to(device)
    return Case((bundle, ids))


def forward(bundle: Bundle, input_ids):
    """ours: the model composed from the playground's kernels."""
    with torch.no_grad():
        return bundle.ours(input_ids)


def hf_forward(bundle: Bundle, input_ids):
    """HF eager (attn_implementation='sdpa'), no KV cache."""
    with torch.no_grad():
        return bundle.hf(input_ids, use_cache=False).logits


def _hf_compile():
    """Peer factory: torch.compile of the HF model (compiled once per bundle). GPU only: inductor on the CPU
    needs a C++ toolchain and minutes per shape, which the interpreter sweep does not need."""
    if not torch.cuda.is_available():
        return None
    if importlib.util.find_spec("transformers") is None:
        return None

    def run(bundle: Bundle, input_ids):
        if bundle.compiled is None:
            bundle.compiled = torch.compile(bundle.hf)
        with torch.no_grad():
            return bundle.compiled(input_ids, use_cache=False).logits

    return run


def _sweep_cases(gpu: bool, *, family: str):
    shapes = registry.family(family).SWEEP_SHAPES[0 if gpu else 1]
    return [dict(seqlen=s, batch=1, **shapes) for s in (GPU_SEQLENS if gpu else CPU_SEQLENS)]


def dense_weights(d: dict) -> tuple[int, int]:
    """(weights a token multiplies by, weights the forward reads) of a dense decoder: per layer q, k, v, out
    (4 h^2) and a two-matrix MLP (2 h inner), plus the LM head (embeddings excluded); both the same."""
    n = d["layers"] * (4 * d["hidden"] ** 2 + 2 * d["hidden"] * d["inner"]) + d["hidden"] * d["vocab"]
    return n, n


def _weights(d: dict, family: str) -> tuple[int, int]:
    return getattr(registry.family(family), "sweep_weights", dense_weights)(d)


def _flops(dims, mode, *, family):
    """~2 * params * tokens, plus causal attention (QK^T and PV over half the square)."""
    tokens = dims["batch"] * dims["seqlen"]
    attention = dims["layers"] * dims["batch"] * 2 * dims["seqlen"] ** 2 * dims["hidden"]
    return 2 * _weights(dims, family)[0] * tokens + attention


def _bytes(dims, dtype, mode, *, family):
    """Approximate: the weights once, ~16 hidden-sized activations per token per layer (norms, projections,
    residuals, attention in/out), the MLP's inner activations, and the logits."""
    size = torch.finfo(dtype).bits // 8
    d, tokens = dims, dims["batch"] * dims["seqlen"]
    inner = d["inner"] * d.get("top_k", 1)  # an MoE token runs top_k experts
    act = tokens * d["layers"] * (16 * d["hidden"] + 2 * inner) + tokens * d["vocab"]
    return (_weights(d, family)[1] + act) * size


def _dims(big, *, family):
    from hypothesis import strategies as st

    return st.sampled_from(_sweep_cases(False, family=family))


def _spec(family: str) -> OpSpec:
    p = functools.partial
    return OpSpec(
        name=f"model_{family}",
        fn=forward,
        reference=hf_forward,
        make_case=p(_make_case, family=family),
        dims=p(_dims, family=family),
        config_dims=_sweep_cases(False, family=family)[0],
        sweep_cases=p(_sweep_cases, family=family),
        flops=p(_flops, family=family),
        bytes_moved=p(_bytes, family=family),
        tolerance=TOLERANCE,
        grad_tolerance=TOLERANCE,
        peers={"hf_compile": _hf_compile},
        modes=("fwd",),
        compile_reference=False,
    )


SPECS = tuple(_spec(family) for family in registry.FAMILIES)
