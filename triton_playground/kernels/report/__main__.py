"""``triton-playground report [OP ...|all] [--arch sm_90] [--out report.csv] [--dtype bf16 fp32] [--peers]``

Compiles every kernel of the ops under every config at the GPU sweep's shapes, prints the table and writes the
CSV (columns: ``kernels/report/__init__.py``). With ``--peers``, also the kernels of the ops' Triton peers
(Liger-Kernel, flash-linear-attention: ``kernels/report/peers.py``) at the same shapes, row by row with ours
(the ``provider`` column). Re-executes itself in compile-only mode when needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import compile_only

SHOWN = ["op", "provider", "shape", "seqlen", "dtype", "kernel", "variant", "config", "def", "pruned", "regs", "spill",
         "stack", "stl", "ldl", "smem_kb", "occ", "limit", "tensor_core", "tma/cpa/ldg", "bar", "sass", "error"]


def _parse(argv):
    p = argparse.ArgumentParser(prog="triton-playground report", description=__doc__.splitlines()[0])
    p.add_argument("ops", nargs="*", default=["all"], help="op names (kernels.OPS) or 'all' (the default)")
    p.add_argument("--arch", default="sm_90", help="target (default sm_90; the occupancy model is an H100's)")
    p.add_argument("--out", default="report.csv", help="CSV path (default report.csv; '-' for none)")
    p.add_argument("--dtype", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    p.add_argument("--peers", action="store_true",
                   help="also compile the Triton peers' kernels (Liger-Kernel, FLA) at the same shapes")
    p.add_argument("--pruned", action="store_true",
                   help="also compile each config where the prune rule drops it at every sweep length (by default "
                        "such a config compiles once, at its first launch, and its other rows say 'not compiled')")
    p.add_argument("--quiet", action="store_true", help="no table on stdout (the CSV only)")
    p.add_argument("--markdown", action="store_true", help="print the per-kernel summary as a Markdown table")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="compiling processes (default: 2 or the CPU count if smaller; 1 on a GPU)")
    return p.parse_args(argv)


def tensor_core(r) -> str:
    return f"HGMMA {r['hgmma']}" if r.get("hgmma") else f"HMMA {r['hmma']}" if r.get("hmma") else "-"


def load_class(r) -> str:
    """The global-to-shared feeds present, TMA first: 'TMA', 'cp.async', 'LDG' (or several, '+'-joined)."""
    kinds = [k for k, c in (("TMA", "utmaldg"), ("cp.async", "ldgsts"), ("LDG", "ldg")) if r.get(c)]
    return "+".join(kinds) or "-"


def frame(rows):
    import pandas as pd

    df = pd.DataFrame(rows)
    for c in ["regs", "spill_stores", "spill_loads", "stack", "local", "smem_static", "smem", "occ_warps", "hgmma",
              "hmma", "utmaldg", "ldgsts", "ldg", "bar", "stl", "ldl", "sass", "warps", "stages"]:
        # counts stay integers where a row has none (an error, a config not compiled where it is pruned)
        df[c] = df[c].astype("Int64") if c in df else pd.Series(pd.NA, index=df.index, dtype="Int64")
    return df


def table(df):
    """The printed view of the report's frame: compact columns."""
    out = df.copy()
    out["def"] = out.get("default", False).map(lambda d: "*" if d is True else "")
    out["spill"] = out["spill_stores"]
    out["smem_kb"] = (out["smem"] / 1024).round(1)
    out["occ"] = out["occ_warps"]
    out["limit"] = out.get("occ_limit", "")
    read = out.to_dict("records")
    compiled = out["sass"].notna()  # rows without numbers: an error, or a config not compiled where it is pruned
    out["tensor_core"] = [tensor_core(r) if ok else "" for r, ok in zip(read, compiled)]
    out["tma/cpa/ldg"] = [f"{r['utmaldg']}/{r['ldgsts']}/{r['ldg']}" if ok else "" for r, ok in zip(read, compiled)]
    return out[[c for c in SHOWN if c in out]].astype(object).fillna("")


def _span(values) -> str:
    lo, hi = int(min(values)), int(max(values))
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _worst(g) -> dict:
    rec = g.to_dict("records")
    return {"regs": _span(g["regs"]), "spill": int(max(g["spill_stores"].max(), g["spill_loads"].max())),
            "occ": _span(g["occ_warps"]), "limit": "/".join(sorted(set(g["occ_limit"]))),
            "tensor_core": "/".join(sorted({tensor_core(r).split()[0] for r in rec})),
            "loads": "/".join(sorted({load_class(r) for r in rec}))}


def summary(df):
    """One line a (op, kernel, dtype): its default config, then every config the autotuner may pick (``may_pick``
    rows: over the shapes and variants where the prune rule keeps it, the default's too), each as the range over
    its rows of registers and occupancy (warps an SM), the worst spill (bytes, ptxas' stores or loads), the
    limiters, and the tensor-core and global-load classes seen. ``configs``: pickable / all."""
    import pandas as pd

    rows = []
    df = df if "provider" in df else df.assign(provider="ours")
    for (op, provider, kernel, dtype), every in df[df["error"].fillna("") == ""].groupby(
            ["op", "provider", "kernel", "dtype"], sort=False):
        named = every[every["default"] == True]  # noqa: E712  (a pandas mask)
        pick = every[(every["may_pick"] == True) & every["sass"].notna()]  # noqa: E712
        default = pick[pick["default"] == True]  # noqa: E712  (where the tuner may pick it)
        row = {"op": op, "provider": provider, "kernel": kernel, "dtype": dtype,
               "configs": f"{pick['cfg'].nunique()}/{every['cfg'].nunique()}",
               "default": named["config"].iloc[0] if len(named) else "-"}
        for name, g in (("def", default), ("pick", pick)):
            row.update({f"{name}_{k}": v for k, v in (_worst(g) if len(g) else {}).items()})
        rows.append(row)
    return pd.DataFrame(rows, dtype=object).fillna("-")  # object: a kernel without a pickable default leaves ints


def markdown(frame) -> str:
    """A frame as a Markdown table (what the README shows; no dependency on tabulate)."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return "\n".join(lines)


_COST = {("attention", "fp32"): 4, ("attention", "bf16"): 3, ("mlp", "fp32"): 2, ("moe", "fp32"): 2}  # rough
_PLANS: dict = {}  # (op, dtype) -> collect.Plan, made by the light passes before the compiling starts



def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    if not compile_only.active():
        compile_only.reexec("triton_playground.kernels.report", argv)
    arch = int(args.arch.removeprefix("sm_"))
    real_driver = not compile_only.install(arch)

    from triton_playground import kernels
    import pandas as pd

    from . import collect

    names = list(kernels.OPS) if "all" in args.ops else args.ops
    unknown = [n for n in names if n not in kernels.OPS]
    if unknown:
        print(f"unknown op(s) {unknown}; known: {list(kernels.OPS)}", file=sys.stderr)
        return 2
    start = time.time()
    pairs = [(n, d) for n in names for d in args.dtype]
    if args.jobs > 1 and not real_driver:
        import multiprocessing

        from tqdm import tqdm

        # spawn, not fork: a forked child of a process that ran torch's OpenMP threads hangs in its first parallel op
        with multiprocessing.get_context("spawn").Pool(args.jobs, collect.worker_init, (arch,)) as pool:
            # the light passes in the workers too; then one job a config index, the longest first (workers end
            # together), reported as each ends
            _PLANS.update(zip(pairs, pool.starmap(collect.plan_job, pairs, chunksize=1)))
            jobs = [(n, d, i) for (n, d), p in _PLANS.items() for i in range(p.n_configs)]
            costly = sorted(jobs, key=lambda j: -_COST.get((j[0], j[1]), 1))
            work = [(*j, _PLANS[j[:2]], args.pruned) for j in costly]
            done = {}
            with tqdm(total=len(work), desc="compiling", unit="job", file=sys.stderr, disable=args.quiet) as bar:
                for job, rows in pool.imap_unordered(collect.keyed_compile_job, work, chunksize=1):
                    done[job] = rows
                    bar.set_postfix_str(f"{job[0]} {job[1]} config {job[2]}: {len(rows)} rows", refresh=False)
                    bar.update()
    else:
        _PLANS.update({(n, d): collect.plan(kernels.OPS[n], d) for n, d in pairs})
        jobs = [(n, d, i) for (n, d), p in _PLANS.items() for i in range(p.n_configs)]
        done = {j: collect.compile_job((*j, _PLANS[j[:2]], args.pruned), real_driver) for j in jobs}
    rows = [{"provider": "ours", **r} for (n, d), p in _PLANS.items()
            for r in collect.finish(kernels.OPS[n], p, [r for j in jobs if j[:2] == (n, d) for r in done[j]])]
    if args.peers:
        from .peers import peer_rows, report_peers

        for n in names:
            for peer, factory in report_peers(kernels.OPS[n]).items():
                for d in args.dtype:
                    print(f"  {n} {d}: compiling {peer}'s kernels")
                    rows += peer_rows(kernels.OPS[n], peer, factory, d, from_driver=real_driver)
        order = {n: i for i, n in enumerate(names)}
        rows.sort(key=lambda r: order[r["op"]])  # stable: each op's rows together, ours first
    df = frame(rows)
    if args.out != "-":
        df.to_csv(args.out, index=False)
    if not args.quiet:
        with pd.option_context("display.width", 250, "display.max_colwidth", 60):
            print(table(df).to_string(index=False))
            print("\nPer kernel: its default config (def_*) and every config the tuner may pick (pick_*), over the "
                  "shapes and variants where the prune rule keeps them:")
            print(markdown(summary(df)) if args.markdown else summary(df).to_string(index=False))
    import triton

    skipped = int((df.get("source") == "not compiled").sum())
    print(f"\n{len(df)} rows, {df['error'].astype(bool).sum()} with errors"
          + (f", {skipped} not compiled (pruned there at every length; --pruned compiles them)" if skipped else "")
          + f"; {args.arch}, triton {triton.__version__}, "
          f"{'driver' if real_driver else 'cuobjdump/nvdisasm'}; {time.time() - start:.0f} s"
          + (f"; CSV: {os.path.abspath(args.out)}" if args.out != "-" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
