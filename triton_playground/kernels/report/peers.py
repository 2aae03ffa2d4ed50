"""The report's peer rows (``triton-playground report --peers``): the Triton kernels of Liger-Kernel and
flash-linear-attention (each op folder's ``peers.py``) compiled for sm_90 at the same shapes as ours.

The peers' kernels are plain ``@triton.jit`` functions (a few behind ``triton.autotune``), not our ``Tuned``, so
they are caught one level lower: while a peer runs, ``JITFunction.run`` (every launch of any Triton kernel) is
swapped for a compile without a launch (``warmup=True``, what our compile-only launches do too) that records the
compiled kernel; ``Autotuner.run`` takes the first of its configs, since choosing needs a GPU to time them on
(Liger's MoE kernels are pinned to one config anyway, ``kernels/peer_libs.py``). One row per distinct compiled kernel
of a (panel, kernel), at the panel's shortest case: the peers' torch parts (the MLP's linears) compute for real on
the CPU, so the longer cases would take hours; a peer kernel that specialises on the row count (Liger's norm
backward makes ``rows_per_program`` a constexpr) compiles anew at each length with the same tiles.

Compile-only mode computes nothing, so a value the peer's host code reads back from a kernel's output would be
garbage. Liger's MoE reads one, the number of row tiles of its routing (``expert_tile_offset[-1]``): after its
prefix-sum kernel is compiled, the offsets are filled as a uniform routing gives them (every expert TK/E pairs),
so the grouped GEMMs are compiled with a real-sized grid.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from .. import _runtime as rt
from ..perf.model import H100
from . import sass
from .collect import DTYPES, _variant
from .shapes import as_on_gpu, build_case, panel_labels, panel_of, sweep_cases

def _is_triton_peer(factory) -> bool:
    """Whether a peer factory lives in an op folder's ``peers.py`` (Liger, FLA: Triton kernels); the others (SDPA,
    FlexAttention, HF's code, torch's grouped GEMM) are torch code, in the op's ``spec.py``."""
    module = getattr(factory, "__module__", "").split(".")
    return module[:3] == ["triton_playground", "kernels", "ops"] and module[-1] == "peers"


def report_peers(spec) -> dict:
    """name -> factory of ``spec``'s peers that run Triton kernels (Liger, FLA): the ones the report compiles."""
    return {name: f for name, f in spec.peers.items() if _is_triton_peer(f)}


@dataclasses.dataclass
class PeerLaunch:
    name: str
    variant: str
    config: str
    compiled: object = None
    error: str = ""


def _uniform_tile_offsets(named: dict) -> None:
    """Liger's ``_moe_router_prefix_sum_kernel`` outputs as a uniform routing makes them: each of the E experts
    gets TK/E (token, slot) pairs, ceil(TK / E / BLOCK_M_TOKEN) row tiles."""
    experts, pairs, rows = int(named["E"]), int(named["TK"]), int(named["BLOCK_M_TOKEN"])
    per_expert = torch.full((experts,), pairs // experts, dtype=torch.int64)
    per_expert[: pairs % experts] += 1
    tiles = (per_expert + rows - 1) // rows
    zero = torch.zeros(1, dtype=torch.int64)
    named["expert_freq_offs_ptr"].copy_(torch.cat([zero, per_expert.cumsum(0)]).to(torch.int32))
    named["expert_tile_offset_ptr"].copy_(torch.cat([zero, tiles.cumsum(0)]).to(torch.int32))


HOST_READS = {"_moe_router_prefix_sum_kernel": _uniform_tile_offsets}


@contextlib.contextmanager
def compiling_launches():
    """Within the block, every Triton launch compiles (nothing runs) and is appended to the yielded list."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    launches: list[PeerLaunch] = []
    original_run, original_tune = JITFunction.run, Autotuner.run
    tuned: list = []  # the config an enclosing Autotuner.run chose, for the launch's label

    def run(self, *args, grid, warmup, **kwargs):
        named = dict(zip(self.arg_names, args)) | kwargs
        config_kwargs = tuned[-1].all_kwargs() if tuned else {}  # an autotuned launch: tune() labels its config
        variant, _ = _variant(self, named, config_kwargs)
        launch = PeerLaunch(self.fn.__name__, variant,
                            f"w{kwargs.get('num_warps', 4)} s{kwargs.get('num_stages', 3)}")
        try:
            with sass.catching_ptxas_log() as log:
                launch.compiled = original_run(self, *args, grid=grid, warmup=True, **kwargs)
            if "spill stores" in log.getvalue():
                launch.compiled.ptxas_log = log.getvalue()
        except Exception as e:  # noqa: BLE001  (a kernel that does not compile is a row, not a crash)
            launch.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        if self.fn.__name__ in HOST_READS:
            HOST_READS[self.fn.__name__](named)
        launches.append(launch)
        return launch.compiled

    def tune(self, *args, **kwargs):
        config = self.configs[0]
        if config.pre_hook is not None:
            config.pre_hook({**dict(zip(self.arg_names, args)), **kwargs, **config.all_kwargs()})
        tuned.append(config)
        try:
            before = len(launches)
            out = self.fn.run(*args, **kwargs, **config.all_kwargs())
            for launch in launches[before:]:
                launch.config = (f"{' '.join(f'{k}={v}' for k, v in config.kwargs.items())} w{config.num_warps} "
                                 f"s{config.num_stages}" + (f" (1st of {len(self.configs)} configs: tuning needs "
                                                           f"a GPU)" if len(self.configs) > 1 else ""))
            return out
        finally:
            tuned.pop()

    JITFunction.run, Autotuner.run = run, tune
    try:
        yield launches
    finally:
        JITFunction.run, Autotuner.run = original_run, original_tune


def _run(fn, case) -> None:
    """The peer's forward, and its backward when the case has inputs that need gradients."""
    outs = fn(*case.args, **case.kwargs)
    outs = [o for o in (outs if isinstance(outs, (tuple, list)) else (outs,))
            if isinstance(o, torch.Tensor) and o.requires_grad]
    if outs and case.grad_inputs():
        torch.autograd.grad(outs, case.grad_inputs(), [torch.empty_like(o) for o in outs], allow_unused=True)


def peer_rows(spec, peer: str, factory, dtype_name: str, *, from_driver: bool = False, log=print) -> list[dict]:
    """The report's rows of one peer of ``spec`` in one dtype: each kernel it compiles at the sweep's shapes."""
    from ..spec import NotComparable

    try:
        fn = factory()
    except Exception as e:  # noqa: BLE001  (a library that cannot load here: one row says why)
        return [{"op": spec.name, "provider": peer, "dtype": dtype_name, "kernel": "-",
                 "error": f"{type(e).__name__}: {str(e)[:200]}"}]
    if fn is None:
        log(f"  {spec.name}/{peer}: not installed, skipped")
        return []
    cases = sweep_cases(spec)  # shortest first within each panel
    labels = panel_labels(cases)
    shortest = list({panel_of(d): d for d in reversed(cases)}.values())[::-1]
    rows, seen = [], set()
    with as_on_gpu(), rt.modeled_sms(H100.sms):
        for dims in shortest:
            panel = panel_of(dims)
            with compiling_launches() as launches:
                try:
                    _run(fn, build_case(spec, dims, DTYPES[dtype_name]))
                except NotComparable:
                    continue
                except Exception as e:  # noqa: BLE001  (a peer that cannot run here: one row says why)
                    launches.append(PeerLaunch("-", "", "", error=f"{type(e).__name__}: {str(e)[:200]}"))
            for launch in launches:
                key = (panel, launch.name, launch.compiled.hash if launch.compiled is not None else launch.error)
                if key in seen:
                    continue
                seen.add(key)
                row = {"op": spec.name, "provider": peer, "shape": labels[panel], "seqlen": dims.get("seqlen"),
                       "dtype": dtype_name, "kernel": launch.name, "variant": launch.variant,
                       "config": launch.config, "cfg": 0, "default": True, "pruned": "", "may_pick": True,
                       "hash": None, "error": launch.error}
                if launch.compiled is not None:
                    row["hash"] = launch.compiled.hash
                    try:
                        row.update(sass.analyse([launch.compiled], from_driver=from_driver)[0])
                    except Exception as e:  # noqa: BLE001
                        row["error"] = f"analysis failed: {type(e).__name__}: {e}"[:200]
                rows.append(row)
    return rows
