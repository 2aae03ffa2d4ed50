"""Drive each op's public function in compile-only mode and turn every kernel it compiles into report rows.

Every ``Tuned`` kernel's ``fn.warmup`` (what a compile-only launch calls) is wrapped while an op runs
(:func:`recording`): each launch is recorded with its config, its *variant* (the constexprs the caller passed,
e.g. the MLP GEMM's epilogue flags ``HAS_BIAS ACT=2 STORE_PRE``) and the configs the kernel's prune rule keeps for
its arguments. The launch then gets a stub back, so a config over the shared-memory limit is reported rather
than aborting the op's remaining launches.

Per op and dtype (:func:`op_rows`): a *light* pass runs every GPU sweep case without compiling, to learn what the
prune rule keeps at each sequence length; then each panel's shortest case (and the first case of any variant
only a longer case launches) runs once per config index with every kernel of the op forced to that config
(``kernels.force_config``), compiling each launch. One row per distinct compiled kernel of a (panel, kernel,
config); ``pruned`` says at which sweep sequence lengths the rule drops the config, and ``may_pick`` whether the
autotuner can pick it anywhere in the panel.

What compiles: every launch the autotuner may pick (its prune rule keeps the config at some sweep length of the
panel), and every config of every kernel at least once, so each has its numbers. A config the rule drops at every
length of every panel compiles at its first launch only; its other launches, which would never run there, get a
row with ``pruned = dropped`` and no numbers (``source = not compiled``), unless ``everything`` (``--pruned``).
Those never-picked compiles were about 30% of the SASS of ``all`` (fp32's large tiles, which the shared-memory
rule drops, most of it).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import sys

import torch

from .. import _runtime as rt
from ..perf.model import H100
from . import sass
from .shapes import as_on_gpu, build_case, panel_labels, panel_of, sweep_cases

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclasses.dataclass
class Launch:
    kernel: rt.Tuned
    config: int  # index into kernel.configs
    variant: str  # the non-config constexprs, compactly (True flags by name, 0/False/None left out)
    sig: dict  # what else Triton specialises on, per argument: a tensor's dtype, an integer's 1 / %16 == 0
    kept: frozenset  # config indices the prune rule keeps for this launch's arguments
    compiled: object = None
    error: str = ""


class _Stub:
    class metadata:  # noqa: N801  (what Tuned reads of a compile-only launch's result)
        shared = 0


def op_kernels(spec) -> list[rt.Tuned]:
    """Every autotuned kernel defined in ``spec``'s package (``kernels/ops/<op>/``): what its function launches."""
    package = spec.fn.__module__.rsplit(".", 1)[0] + "."
    found = {}
    for name, module in list(sys.modules.items()):
        if name.startswith(package) and module is not None:
            found.update({id(v): v for v in vars(module).values() if isinstance(v, rt.Tuned)})
    return sorted(found.values(), key=lambda t: (t.fn.__module__, t.fn.fn.__code__.co_firstlineno))


def _variant(fn, named: dict, config_kwargs: dict) -> tuple[str, dict]:
    flags, sig = [], {}
    for p in fn.params:
        if p.name not in named:
            continue
        v = named[p.name]
        if p.is_constexpr:
            if p.name in config_kwargs or p.name == "PRECISION" or v is False or v is None or v == 0:
                continue
            flags.append(p.name if v is True else f"{p.name}={v}")
        elif isinstance(v, torch.Tensor):
            sig[p.name] = f"{p.name}:{str(v.dtype).removeprefix('torch.')}"
        elif type(v) is int and not p.do_not_specialize:
            sig[p.name] = f"{p.name}=1" if v == 1 else f"{p.name}%16=0" if v % 16 == 0 else f"{p.name}%16!=0"
    return " ".join(flags), sig


@contextlib.contextmanager
def recording(kernels: list[rt.Tuned], compile=False):
    """Within the block, every launch of ``kernels`` is appended to the yielded list, compiled if ``compile`` (a
    bool, or a predicate of the :class:`Launch`)."""
    launches: list[Launch] = []

    def wrap(tuned, original):
        def warmup(*args, grid, **kwargs):
            config = tuned._last_config  # Tuned.launch sets it just before calling warmup
            index = next(i for i, c in enumerate(tuned.configs) if c is config)
            config_kwargs = config.all_kwargs()
            named = dict(zip(tuned.arg_names, args)) | {k: v for k, v in kwargs.items() if k not in config_kwargs}
            kept = tuned.prune(tuned.configs, named) if tuned.prune else tuned.configs
            launch = Launch(tuned, index, *_variant(tuned.fn, named, config_kwargs),
                            frozenset(i for i, c in enumerate(tuned.configs) if any(c is k for k in kept)))
            if compile is True or (callable(compile) and compile(launch)):
                try:
                    with sass.catching_ptxas_log() as log:
                        launch.compiled = original(*args, grid=grid, **kwargs)
                    if "spill stores" in log.getvalue():  # compiled now, not found in Triton's cache
                        launch.compiled.ptxas_log = log.getvalue()
                except Exception as e:  # noqa: BLE001  (a config that does not compile is a row, not a crash)
                    launch.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
            launches.append(launch)
            return _Stub

        return warmup

    for tuned in kernels:
        tuned.fn.warmup = wrap(tuned, tuned.fn.warmup)
    try:
        yield launches
    finally:
        for tuned in kernels:
            del tuned.fn.warmup  # the instance attribute: JITFunction.warmup shows through again


def run_case(spec, case) -> None:
    """The op's forward, and its backward when it has one (compile-only: nothing is computed)."""
    outs = spec.fn(*case.args, **case.kwargs)
    outs = [o for o in (outs if isinstance(outs, (tuple, list)) else (outs,))
            if isinstance(o, torch.Tensor) and o.requires_grad]
    if outs and case.grad_inputs():
        torch.autograd.grad(outs, case.grad_inputs(), [torch.empty_like(o) for o in outs], allow_unused=True)


def config_label(config) -> str:
    kw = " ".join(f"{k.replace('BLOCK_', 'B')}={int(v) if isinstance(v, bool) else v}"
                  for k, v in config.kwargs.items())
    return f"{kw} w{config.num_warps} s{config.num_stages}".strip()


@dataclasses.dataclass
class Plan:
    """What the light pass learnt for one op and dtype: which cases to compile, what the prune rule keeps."""

    op: str
    dtype: str
    labels: dict  # panel -> its label
    seen: dict  # (panel, kernel name, variant) -> {seqlen: kept config indices}
    full: dict  # panel -> the cases (dims) to compile at
    n_configs: int  # the most configs of any of the op's kernels


def plan(spec, dtype_name: str, log=print) -> Plan:
    """The light pass: every GPU sweep case runs once with nothing compiled, recording launches and prune choices."""
    kernels = op_kernels(spec)
    cases = sweep_cases(spec)
    seen = collections.defaultdict(dict)
    full = {}
    with as_on_gpu(), rt.modeled_sms(H100.sms):
        for dims in cases:
            panel = panel_of(dims)
            with recording(kernels, compile=False) as launches:
                run_case(spec, build_case(spec, dims, DTYPES[dtype_name]))
            new = {(l.kernel.name, l.variant) for l in launches} - {k[1:] for k in seen if k[0] == panel}
            if new:  # the panel's shortest case, and any case launching a variant no shorter one did
                full.setdefault(panel, []).append(dims)
            for l in launches:
                seen[(panel, l.kernel.name, l.variant)][dims.get("seqlen")] = l.kept
    labels = panel_labels(cases)
    for panel, chosen in full.items():
        log(f"  {spec.name} {dtype_name} {labels[panel]}: compiling at seqlen "
            f"{', '.join(str(d.get('seqlen')) for d in chosen)}")
    return Plan(spec.name, dtype_name, labels, dict(seen), full, max(len(t.configs) for t in kernels))


def _may_pick(p: Plan, panel, name: str, variant: str, index: int) -> bool:
    """Whether the prune rule keeps config ``index`` of kernel ``name`` (``variant``) at some sweep length of
    ``panel`` (a launch the light pass did not see: yes, it is compiled)."""
    kept = p.seen.get((panel, name, variant))
    return not kept or any(index in k for k in kept.values())


def compile_rows(spec, p: Plan, index: int, *, from_driver: bool = False, everything: bool = False) -> list[dict]:
    """Rows of config ``index`` of every kernel of the op that has one: the planned cases run with every kernel
    forced to that config (or its last), and the launches at ``index`` compile: those the autotuner may pick, and
    a kernel's first when it may pick ``index`` nowhere (the module docstring); all of them with ``everything``."""
    kernels, rows, done = op_kernels(spec), [], set()
    pickable = {name for (panel, name, variant) in p.seen if _may_pick(p, panel, name, variant, index)}
    once: set[str] = set()  # kernels never picked at ``index``, compiled once already

    def wanted(panel, launch: Launch) -> bool:
        name = launch.kernel.name
        if launch.config != index:
            return False
        if everything or _may_pick(p, panel, name, launch.variant, index):
            return True
        if name in pickable or name in once:
            return False
        once.add(name)
        return True

    with as_on_gpu(), rt.modeled_sms(H100.sms):
        for panel, chosen in p.full.items():
            for dims in chosen:
                with rt.force_configs(kernels, index), recording(kernels, compile=lambda l: wanted(panel, l)) as launches:
                    run_case(spec, build_case(spec, dims, DTYPES[p.dtype]))
                for l in launches:
                    # a launch not compiled: what Triton specialises on stands in for its hash (a compiled one
                    # leaves both keys, so its uncompiled twin at a longer length is no second row)
                    spec_key = (panel, l.kernel.name, l.variant, *sorted(l.sig.items()))
                    key = (panel, l.kernel.name, l.compiled.hash) if l.compiled else spec_key
                    if l.config == index and key not in done:
                        done.update({key, spec_key})
                        rows.append((_row(spec, p, panel, dims, l), l.compiled))
    return _analysed(rows, from_driver)


def _analysed(rows: list, from_driver: bool) -> list[dict]:
    """``(row, compiled kernel or None)`` pairs -> rows with the cubin's columns, the kernels read in one batch."""
    compiled = [(row, kernel) for row, kernel in rows if kernel is not None]
    for row, kernel in rows:
        if kernel is None and not row["error"]:
            row["source"] = "not compiled"  # pruned here at every length: it would never run here
    try:
        for (row, _), stats in zip(compiled, sass.analyse([k for _, k in compiled], from_driver=from_driver)):
            row.update(stats)
    except Exception:  # noqa: BLE001  (one kernel the batch cannot read: read each alone, the culprit gets its error)
        for row, kernel in compiled:
            try:
                row.update(sass.analyse([kernel], from_driver=from_driver)[0])
            except Exception as e:  # noqa: BLE001
                row["error"] = f"analysis failed: {type(e).__name__}: {e}"[:200]
    return [row for row, _ in rows]


def worker_init(arch: int) -> None:
    """A compiling worker process (spawned: kernels is imported afresh, in compile-only mode by inheritance)."""
    from . import compile_only

    torch.set_num_threads(1)  # one compiling process a core
    compile_only.install(arch)


def compile_job(job, from_driver: bool = False) -> list[dict]:
    """``job = (op name, dtype, config index, Plan, everything)``: :func:`compile_rows` in a worker."""
    from .. import OPS

    name, _, index, p, everything = job
    return compile_rows(OPS[name], p, index, from_driver=from_driver, everything=everything)


def plan_job(name: str, dtype_name: str) -> Plan:
    """:func:`plan` in a worker, by op name."""
    from .. import OPS

    return plan(OPS[name], dtype_name)


def keyed_compile_job(job) -> tuple[tuple, list[dict]]:
    """:func:`compile_job`, answered with the job's (op, dtype, config index)."""
    return job[:3], compile_job(job)


def op_rows(spec, dtype_name: str, *, from_driver: bool = False, everything: bool = False, log=print) -> list[dict]:
    """The report's rows for one op in one dtype (see the module docstring)."""
    p = plan(spec, dtype_name, log)
    return finish(spec, p, [r for i in range(p.n_configs)
                            for r in compile_rows(spec, p, i, from_driver=from_driver, everything=everything)])


def _row(spec, p: Plan, panel, dims, launch: Launch) -> dict:
    tuned = launch.kernel
    kept = p.seen.get((panel, tuned.name, launch.variant), {})
    dropped = [s for s, k in kept.items() if launch.config not in k]
    row = {
        "op": spec.name, "shape": p.labels[panel], "seqlen": dims.get("seqlen"), "dtype": p.dtype, "kernel": tuned.name,
        "variant": launch.variant, "config": config_label(tuned.configs[launch.config]), "cfg": launch.config,
        "default": tuned.configs[launch.config] is tuned.default,
        "pruned": "" if not dropped else "dropped" if len(dropped) == len(kept) else
        "dropped at seqlen " + ",".join(map(str, sorted(dropped))),
        "may_pick": len(dropped) < len(kept), "_sig": launch.sig, "hash": None, "error": launch.error,
    }
    if launch.compiled is not None:
        row["hash"] = launch.compiled.hash
    return row


def finish(spec, p: Plan, rows: list[dict]) -> list[dict]:
    """The op's rows in reading order (shape, kernel, variant, config), variants told apart (``1:...``)."""
    shapes = {label: i for i, label in enumerate(p.labels.values())}
    kernels = {t.name: i for i, t in enumerate(op_kernels(spec))}
    rows = sorted(rows, key=lambda r: (shapes[r["shape"]], kernels[r["kernel"]], r["seqlen"], r["variant"], r["cfg"]))
    return _disambiguate(rows)


def _disambiguate(rows: list[dict]) -> list[dict]:
    """Rows of one (shape, kernel, variant, config) with different compiled kernels differ in what Triton
    specialises on besides constexprs: their variant adds what tells them apart (``s_am=1``: a transposed operand;
    ``X:float32``: another input dtype)."""
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["shape"], r["kernel"], r["variant"], r["cfg"])].append(r)
    for group in groups.values():
        if len({r["hash"] for r in group}) > 1:
            common = set.intersection(*(set(r["_sig"].values()) for r in group))
            for r in group:
                r["variant"] = " ".join([r["variant"], *(v for v in r["_sig"].values() if v not in common)]).strip()
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
