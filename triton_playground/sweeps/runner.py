"""The sweep: measure every provider of an op over its cases and write one CSV row per measurement.

Each step has its module: :mod:`sweeps.plan` lists the work items (op × dims × dtype × mode) and makes the
providers; :mod:`sweeps.store` reads what an earlier run left in the CSV (resume) and writes the rows; a
:class:`Measurer` (:class:`sweeps.timing.Timer` by default) measures one provider on one case. This module ties
them together and adds the columns derived from a measurement: the roofline (``tflops``, ``gbps``,
``pct_roofline``, against the measurer's ceilings) and ``speedup``, eager's time over the provider's, on the same
inputs (eager runs first; on resume, eager's time may come from the earlier run). A case that fails or runs out of
memory becomes a row with its ``error``, which the next run retries. Under torchrun, each process measures its
share of the cases into a shard of the CSV and rank 0 merges them at the end (:mod:`sweeps.distributed`).
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
from pathlib import Path
from typing import Protocol

import torch
import triton
from tqdm import tqdm

from triton_playground.kernels import _runtime as rt
from triton_playground.kernels.spec import Case, NotComparable, OpSpec
from triton_playground.sweeps.agreement import check_dims, disagreement
from triton_playground.sweeps.distributed import Ranks, assign, kill_hook
from triton_playground.sweeps.plan import ProviderFns, WorkItem, expected_cost, providers_but_compile, work_items
from triton_playground.sweeps.store import COLUMNS, Store, merge, shard_files, shard_path  # noqa: F401  (COLUMNS: test_plots)
from triton_playground.sweeps.timing import Timer


class Measurer(Protocol):
    """How one provider is measured on one case."""

    device: str  # the rows' ``device`` column
    real_sizes: bool  # the GPU sweep's cases (else the interpreter's tiny ones)
    stand_ins: dict  # dtype -> the dtype inputs are made in instead (a model counting bf16 with fp16)
    notice: str  # what the rows are, printed before the run and after "wrote"

    def ceilings(self) -> dict:
        """``copy_gbps`` and ``matmul_tflops``: the roofline's ceilings (columns of every row)."""

    def measure(self, fn, case: Case, mode: str, *, provider: str, spec: OpSpec, key: tuple) -> dict:
        """The columns of ``fn`` doing ``mode``'s work on ``case``, ``ms`` among them; raises when that fails.
        ``key`` names the inputs whatever the mode (a measurer may reuse what it learnt of them)."""


def default_measurer() -> Measurer:
    """Timing on a GPU; without one, the H100 model of counted work (sweeps/modeled.py)."""
    if rt.INTERPRET:
        from triton_playground.sweeps.modeled import Modeled

        return Modeled()
    return Timer()


def run(specs: list[OpSpec], out: Path, *, dtypes=None, modes=None, wanted_providers=None, max_seqlen=None,
        measurer: Measurer | None = None, ranks: Ranks | None = None, full: bool = True) -> Path:
    """Measure ``specs`` into the CSV ``out``, resuming it. Raises NothingToRun when the selection is empty.
    ``full``: every case of the ops' lists, rather than the quick plan's few (``plan.QUICK_SEQLENS``).

    ``ranks``: this process's place in a distributed run (sweeps/distributed.py): it measures its share of the
    cases into its shard, and rank 0 merges the shards into ``out`` at the end. Without it, one process does all.
    """
    ranks = ranks or Ranks()
    measurer = measurer or default_measurer()
    gpu = not rt.INTERPRET
    skip_compile = wanted_providers is None and not gpu
    if skip_compile:
        wanted_providers = providers_but_compile(specs)  # compiling on a CPU: minutes
    items = work_items(specs, gpu=measurer.real_sizes, dtypes=dtypes, modes=modes, wanted_providers=wanted_providers,
                       max_seqlen=max_seqlen, stand_ins=measurer.stand_ins, full=full)
    if ranks.lead and measurer.notice:
        print(measurer.notice, flush=True)
    if ranks.lead and skip_compile:
        print("(torch.compile providers are skipped under the interpreter; name them with --providers to add them.)")
    groups = _by_case(items)
    store, groups = _share(out, groups, measurer.device, ranks)

    sweep = _Sweep(store, measurer, total=sum(len(item.providers) for g in groups for item in g), ranks=ranks)
    for group in _prepared(measurer, groups, sweep.todo):
        for item in group:
            sweep.run(item)
    sweep.bar.close()
    if sweep.fns.unavailable:
        print(f"{ranks.tag()}not available here, skipped: " + ", ".join(sweep.fns.unavailable))
    if sweep.not_comparable:
        print(f"{ranks.tag()}cases a peer does not cover, no rows: "
              + "; ".join(f"{k} ({n} rows: {why})" for k, (n, why) in sweep.not_comparable.items()))
    if ranks.distributed:
        if sweep.written:
            print(f"{ranks.tag()}wrote {store.file} ({sweep.written} rows)", flush=True)
        _merge_shards(out, store.file, sweep.written, ranks)
        return out
    if sweep.written:
        print(f"wrote {out} ({sweep.written} rows)")
    if shard_files(out):  # an earlier distributed run's, which died before merging them
        print(f"merged the shards of an earlier run into {out} ({merge(out)} rows)")
    elif not sweep.written:
        print(f"nothing new: every selected row is already in {out}")
    return out


def _share(out: Path, groups: list[list[WorkItem]], device: str, ranks: Ranks):
    """The store rows go to and the groups (cases) this process measures: all of them, writing to ``out``; or, in
    a distributed run, its share, writing to its shard (rank 0 reads what earlier runs left and deals the cases
    out, see sweeps/distributed.py)."""
    if not ranks.distributed:
        return _resuming(Store(out)), groups
    shard = shard_path(out, ranks.rank)
    if ranks.lead:
        store = _resuming(Store(out, write_to=shard))

        def cost(item):
            todo = [p for p in item.providers if not store.finished({**item.columns(p), "device": device})]
            return expected_cost(item, todo) if todo else 0.0

        costs = [sum(map(cost, group)) for group in groups]
        shares = assign(costs, ranks.world_size)
        ranks.broadcast((store.state(), shares))
    else:
        state, shares = ranks.broadcast(None)
        store = Store(out, write_to=shard, state=state)
    mine = shares[ranks.rank]
    print(f"{ranks.tag()}{len(mine)} of {sum(map(len, shares))} cases to do"
          + (f", expected cost {sum(costs[i] for i in mine):.1f} of {sum(costs):.1f}" if ranks.lead else ""),
          flush=True)
    return store, [groups[i] for i in mine]


def _resuming(store: Store) -> Store:
    if store.resumed:
        shards = [p.name for p in shard_files(store.path)]
        print(f"resuming: {len(store.done)} finished rows in {store.path}"
              + (f" and the shards {', '.join(shards)}" if shards else "")
              + (f"; {len(store.failed)} failed ones are retried where selected" if store.failed else ""), flush=True)
    return store


def _merge_shards(out: Path, shard: Path, written: int, ranks: Ranks) -> None:
    """The end of a distributed run: every rank sends its shard to rank 0, which merges them into ``out``; then,
    past a barrier, each rank removes its own shard (on a shared disk rank 0 has already)."""
    sent = ranks.gather((written, shard.read_text() if shard.exists() else ""))
    if ranks.lead:
        texts = [text for _, text in sent]
        new = sum(n for n, _ in sent)
        if any(t.strip() for t in texts) or shard_files(out):
            rows = merge(out, texts)
            print(f"merged the shards of {ranks.world_size} ranks into {out} ({rows} rows, {new} new)", flush=True)
        else:
            print(f"nothing new: every selected row is already in {out}", flush=True)
    ranks.barrier()
    shard.unlink(missing_ok=True)


class _Sweep:
    """The loop's state: the store rows go to, the measurer, the columns all rows share, providers, progress."""

    def __init__(self, store: Store, measurer: Measurer, total: int, ranks: Ranks):
        self.store, self.measurer, self.ranks = store, measurer, ranks
        self.ceilings = measurer.ceilings()
        self.shared = {"device": measurer.device, "rank": ranks.rank, "world_size": ranks.world_size,
                       "torch": torch.__version__, "triton": triton.__version__, "commit": commit(), **self.ceilings}
        print(f"{ranks.tag()}device: {measurer.device}; copy {self.ceilings['copy_gbps']:.0f} GB/s, "
              f"matmul {self.ceilings['matmul_tflops']:.1f} TFLOP/s")
        self.fns = ProviderFns()
        self.bar = tqdm(total=total, desc=f"sweep rank {ranks.rank}" if ranks.distributed else "sweep", unit="run",
                        position=ranks.local_rank if ranks.distributed and sys.stderr.isatty() else None)
        self.written = 0
        self.not_comparable: dict = {}  # "op/provider" -> (rows not written, why)
        self._verdicts: dict = {}  # (op, provider, check case, dtype, backward) -> None or the disagreement

    def todo(self, item: WorkItem) -> list[str]:
        """The providers of ``item`` the CSV has no finished row of."""
        return [p for p in item.providers if not self.store.finished(self.key_columns(item, p))]

    def run(self, item: WorkItem) -> None:
        """Measure, on one set of inputs, each provider of ``item`` the CSV has no finished row of."""
        todo = self.todo(item)
        self.bar.update(len(item.providers) - len(todo))
        if not todo:
            return
        self.bar.set_postfix_str(item.label())
        ready = getattr(self.measurer, "ready", lambda key, provider: False)
        # a measurer that already counted this case needs no inputs (real-sized ones take a while to make)
        case = None if all(ready(item.case_key(), p) for p in todo) else _make_case(item)
        for provider in todo:
            fn = self.fns.get(item, provider)
            row = None if fn is None else self.row(item, provider, fn, case)  # None: unavailable, not comparable
            if row is not None:
                self.store.add(row)
                self.written += 1
                if row["error"]:  # one line, above the bar; the row keeps it, and the next run retries it
                    self.bar.write(f"  {item.label()} {provider}: {row['error']}")
                kill_hook(self.ranks, self.written)
            self.bar.update(1)

    def key_columns(self, item: WorkItem, provider: str) -> dict:
        return {**item.columns(provider), "device": self.measurer.device}

    def row(self, item: WorkItem, provider: str, fn, case) -> dict | None:
        """The row of ``provider`` on ``item``: its measurement, or the error that stopped it (``case`` or ``fn``
        may be the exception that kept it from being made); a peer's only once it agrees with the reference
        (sweeps/agreement.py). None for a case the peer does not cover (:class:`NotComparable`)."""
        row = {**self.key_columns(item, provider), **self.shared, "error": ""}
        failure = next((x for x in (case, fn) if isinstance(x, Exception)), None)
        if failure is not None:
            row["error"] = _error_text(failure)
        else:
            try:
                verdict = self.agreement(item, provider, fn) if provider in item.spec.peers else None
                if verdict:
                    row["error"] = verdict[:300]
                else:
                    row.update(self.measured(item, provider, fn, case))
            except NotComparable as e:
                key = f"{item.spec.name}/{provider}"
                self.not_comparable[key] = (self.not_comparable.get(key, (0,))[0] + 1, str(e))
                return None
            except Exception as e:  # noqa: BLE001  (OOM, a peer that cannot run: recorded, the sweep goes on)
                row["error"] = _error_text(e)
        if row["error"] and torch.cuda.is_available():
            torch.cuda.empty_cache()
        row["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return row

    def agreement(self, item: WorkItem, provider: str, fn) -> str | None:
        """None when the peer agrees with the reference (checked once per panel, dtype and direction), else the
        disagreement. Raises NotComparable where the peer does not cover the case."""
        backward = item.mode != "fwd"
        dims = check_dims(item.spec, item.dims)
        key = (item.spec.name, provider, str(sorted(dims.items())), item.dtype, backward)
        if key not in self._verdicts:
            try:
                self._verdicts[key] = disagreement(item.spec, fn, item.dims, item.run_dtype or item.dtype, backward,
                                                   rt.DEVICE)
            except NotComparable as e:
                self._verdicts[key] = e
        if isinstance(self._verdicts[key], NotComparable):
            raise self._verdicts[key]
        return self._verdicts[key]

    def measured(self, item: WorkItem, provider: str, fn, case: Case) -> dict:
        """The measurer's columns, with the roofline's, ours' tuned configs and the speedup over eager."""
        columns = self.measurer.measure(fn, case, item.mode, provider=provider, spec=item.spec, key=item.case_key())
        ms = columns["ms"]
        columns.update(roofline(item, ms, self.ceilings), config=_config_of(item.spec) if provider == "ours" else "")
        check_sampled_count(columns)
        eager_ms = ms if provider == "eager" else self.store.eager_ms(self.key_columns(item, provider))
        columns["speedup"] = eager_ms / ms if eager_ms else None
        return columns


def _by_case(items: list[WorkItem]) -> list[list[WorkItem]]:
    """Consecutive items on the same inputs (the modes of one case), grouped."""
    groups: list[list[WorkItem]] = []
    for item in items:
        if groups and groups[-1][0].case_key() == item.case_key():
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _prepared(measurer, groups, todo):
    """The groups in order, each once the measurer has done what it does ahead (counting, in parallel)."""
    prepare = getattr(measurer, "prepare", None)
    if prepare is None:
        yield from groups
        return
    pending = [g for g in groups if any(todo(item) for item in g)]
    ready = iter(prepare(pending, todo))
    for group in groups:
        # a group with work comes when the measurer is done with it; one without (resumed) passes at once
        yield next(ready) if group in pending else group


def roofline(item: WorkItem, ms: float, ceilings: dict) -> dict:
    """``tflops``, ``gbps`` and ``pct_roofline`` of ``item`` done in ``ms``, from the op's least work and traffic
    (``spec.flops``, ``spec.bytes_moved``) and the ceilings' matmul rate and copy bandwidth."""
    spec = item.spec
    flops, nbytes = spec.flops(item.dims, item.mode), spec.bytes_moved(item.dims, item.dtype, item.mode)
    roof_ms = max(flops / (ceilings["matmul_tflops"] * 1e9), nbytes / (ceilings["copy_gbps"] * 1e6))
    return {"tflops": flops / ms / 1e9, "gbps": nbytes / ms / 1e6, "pct_roofline": 100 * roof_ms / ms,
            "flops_useful": flops, "bytes_min": nbytes}


def check_sampled_count(columns: dict) -> None:
    """Raise when a sampled count (``counted`` says how many programs ran) executed fewer matrix FLOPs than the op's
    least: impossible, so the sample misjudged a grid whose programs do uneven work (the MoE's grouped GEMMs size
    their grids for the worst routing; most programs are empty or full). The row then says so instead of a speed.
    ``flops_exec`` counts ``tl.dot`` FLOPs only, so ops without matrix products (norms, RoPE) are not judged."""
    counted = columns.get("counted") or "every program"
    done, least = columns.get("flops_exec"), columns.get("flops_useful")
    if counted != "every program" and done and least and done < 0.95 * least:
        raise RuntimeError(f"sampled count below the least FLOPs ({done:.3g} < {least:.3g}; {counted}): the sample "
                           f"misjudged a grid of uneven programs; count every program with --sample 0")


def _make_case(item: WorkItem):
    """The item's inputs, or, when they cannot be made, the error its rows record (a failure, not fatal)."""
    try:
        return item.make_case()
    except Exception as e:  # noqa: BLE001
        return RuntimeError(f"{type(e).__name__}: {e}")


def _error_text(e: Exception) -> str:
    """One line: the exception's type and the first line of its message (a worker's error comes named already)."""
    text = str(e).splitlines()[0] if str(e) else ""
    named = re.match(r"[A-Za-z_.]*(Error|Exception|Interrupt): ", text)
    return (text if named else f"{type(e).__name__}: {text}")[:300]


def _config_of(spec: OpSpec) -> str:
    parts = [f"{k.name}: {k.last_config()}" for k in spec.kernels if k.last_config() is not None]
    return "; ".join(parts)


def commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
