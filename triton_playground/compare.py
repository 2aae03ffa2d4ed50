"""``triton-playground compare BASE [HEAD] [OP ...]``: did a change make the kernels better, everywhere they run?

Each side is the package at a git ref, in its own worktree (``git worktree add --detach``, kept under the cache,
``.cache/compare/trees/<sha>``), or the working tree itself (HEAD left out: uncommitted changes included). Each
side runs *its own code* in subprocesses (cwd and ``PYTHONPATH`` its tree; the package each imported is checked):

* the sweep, counted and modeled on an H100 (``device=model:H100``; the quick plan of ``ours`` by default), with a
  fixed sample of each launch's programs and no time budget, so the same code counts the same work to the last
  byte: ``flops_exec``, ``bytes_dram`` (the model's HBM bytes), ``launches`` and the modeled ``ms`` per case;
* the static sm_90 report (bf16): registers, spills, occupancy, tensor-core and load class per kernel config.

A git ref's results are cached per commit and arguments (``.cache/compare/runs/``); the working tree's per hash
of its diff against HEAD and its untracked files. The two sides are joined row by row and printed as base, head
and head/base, regressions first; an unchanged tree gives every ratio exactly 1. ``--fail-on-regression PCT``
exits 1 when any case's modeled time or DRAM bytes grows by more than PCT%, or a config the tuner may pick starts
to spill. On a GPU the sweep also times both sides with ``do_bench``, alternating A/B/A/B (``--rounds``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

SWEEP_KEY = ["op", "mode", "dtype", "seqlen", "params"]
SWEEP_COLS = ["ms", "bytes_dram", "flops_exec", "launches"]
GATED = ["ms", "bytes_dram"]  # what --fail-on-regression checks of a case
REPORT_KEY = ["provider", "op", "shape", "seqlen", "dtype", "kernel", "variant", "config"]
REPORT_COLS = ["regs", "spill", "occ", "tensor_core", "loads"]
CACHE_VERSION = "1"  # bump when what a side runs changes, so cached results are not reused

# Runs the sweep in a side's tree: says which package it imported, and counts without the time budget (which
# stops a sampled launch after a second, so a count would depend on the machine's speed).
SHIM = r"""
import sys
import triton_playground
print("compare: package " + triton_playground.__file__, file=sys.stderr)
from triton_playground.sweeps import modeled
_init = modeled.Modeled.__init__
def __init__(self, sample=modeled.DEFAULT_SAMPLE, workers=None, seconds=None):
    _init(self, sample, workers, None)
modeled.Modeled.__init__ = __init__
from triton_playground.sweeps.__main__ import main
main(sys.argv[1:])
"""


class Refused(Exception):
    """A bad ref, op or run: one line, exit 2."""


def git(repo: Path, *args: str, text: bool = True):
    run = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=text)
    if run.returncode:
        raise Refused(f"git {' '.join(args)}: {(run.stderr or '').strip().splitlines()[-1:] or run.returncode}")
    return run.stdout.strip() if text else run.stdout


class Side:
    def __init__(self, name: str, label: str, tree: Path, key: str):
        self.name, self.label, self.tree, self.key = name, label, tree, key


def ref_side(name: str, repo: Path, ref: str, cache: Path) -> Side:
    try:
        sha = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except Refused:
        raise Refused(f"{ref!r} is not a commit of {repo}") from None
    tree = cache / "trees" / sha
    if not (tree / ".git").exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        git(repo, "worktree", "prune")
        git(repo, "worktree", "add", "--detach", "--force", str(tree), sha)
    return Side(name, ref if sha.startswith(ref) else f"{ref} ({sha[:7]})", tree, sha)


def working_side(name: str, repo: Path) -> Side:
    digest = hashlib.sha256(git(repo, "rev-parse", "HEAD").encode())
    digest.update(git(repo, "diff", "HEAD", "--binary", text=False))
    for path in git(repo, "ls-files", "--others", "--exclude-standard", "-z").split("\0"):
        if path and (repo / path).is_file():
            digest.update(path.encode() + b"\0" + (repo / path).read_bytes())
    return Side(name, "working tree", repo, "wt-" + digest.hexdigest()[:16])


def run_step(side: Side, argv: list[str], out: Path, env: dict) -> Path:
    """Run one step (``argv`` after the python executable) in the side's tree, its CSV to ``out`` (kept when done)."""
    if out.exists():
        print(f"  {side.name}: {out.stem} cached ({out})")
        return out
    print(f"  {side.name}: {out.stem} of {side.label} ...", flush=True)
    part = out.with_name(out.name + ".partial")
    env = {**os.environ, **env, "PYTHONPATH": str(side.tree)}
    run = subprocess.run([sys.executable, *[str(part) if a == "{out}" else a for a in argv]], cwd=side.tree,
                         env=env, capture_output=True, text=True)
    if run.returncode:
        last = [line for line in run.stderr.strip().splitlines() if line.strip()][-1:] or [f"exit {run.returncode}"]
        raise Refused(f"{side.name} ({side.label}) {out.stem} failed: {last[0]}")
    imported = [line.split(" ", 2)[2] for line in run.stderr.splitlines() if line.startswith("compare: package ")]
    if imported and not Path(imported[0]).resolve().is_relative_to(side.tree.resolve()):
        raise Refused(f"{side.name}: imported {imported[0]}, not the side's own tree {side.tree}")
    os.replace(part, out)
    return out


def _sweep_args(args) -> list[str]:
    """The sweep's options for the cases compared (the same on both sides, counted or timed)."""
    chosen = [f for flag, v in (("--max-seqlen", args.max_seqlen), ("--modes", args.modes),
                                ("--dtypes", args.dtypes)) if v for f in (flag, str(v))]
    return ["--providers", "ours", *chosen] + (["--full"] if args.full else [])


def side_results(side: Side, args, cache: Path) -> dict:
    """{"sweep": CSV, "report": CSV} of one side (each None when not asked for)."""
    ops = args.ops or ["all"]
    sweep_args = _sweep_args(args) + ["--sample", str(args.sample)]
    report_ops = [o for o in ops if not o.startswith("model_")]
    tag = hashlib.sha256(repr((CACHE_VERSION, ops, sweep_args)).encode()).hexdigest()[:12]
    run_dir = cache / "runs" / f"{side.key}-{tag}"
    run_dir.mkdir(parents=True, exist_ok=True)
    counting = {"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}  # exact counts on any machine
    out = {"sweep": None, "report": None, "gpu": []}
    if not args.no_sweep:
        out["sweep"] = run_step(side, ["-c", SHIM, *ops, "--out", "{out}", *sweep_args],
                                run_dir / "sweep.csv", counting)
    if not args.no_report and report_ops:
        out["report"] = run_step(side, ["-m", "triton_playground.kernels.report", *report_ops, "--dtype", "bf16",
                                        "--quiet", "--out", "{out}"], run_dir / "report.csv",
                                 {"CUDA_VISIBLE_DEVICES": ""})
    out["run_dir"] = run_dir
    return out


# ------------------------------------------------------------------------------------------------ joining


def ratio(head, base):
    """head / base; exactly 1 where they are equal (0 and 0 too); inf where only the head has any."""
    import numpy as np

    h, b = head.astype(float), base.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(h == b, 1.0, h / b)
    return np.where(np.isnan(h) | np.isnan(b), np.nan, r)


def compare_sweeps(base_csv: Path, head_csv: Path):
    import pandas as pd

    def read(path):
        df = pd.read_csv(path, dtype={"params": str})
        df = df[df["provider"] == "ours"]
        failed = df["error"].notna() & (df["error"].astype(str) != "")
        df.loc[failed, SWEEP_COLS] = float("nan")
        return df[SWEEP_KEY + SWEEP_COLS + ["error"]]

    df = read(base_csv).merge(read(head_csv), on=SWEEP_KEY, how="outer", suffixes=("_b", "_h"))
    for c in SWEEP_COLS:
        df[f"{c}_x"] = ratio(df[f"{c}_h"], df[f"{c}_b"])
    df["worst_x"] = df[[f"{c}_x" for c in GATED]].max(axis=1).fillna(float("inf"))
    return df.sort_values(["worst_x", "op", "mode", "seqlen"], ascending=[False, True, True, True],
                          ignore_index=True)


def _report_frame(path: Path):
    import pandas as pd

    from triton_playground.kernels.report.__main__ import load_class, tensor_core

    df = pd.read_csv(path, dtype={"seqlen": str})
    df = df.assign(provider=df.get("provider", "ours"))
    rec = df.to_dict("records")
    compiled = df["sass"].notna()
    df["spill"] = df[["spill_stores", "spill_loads"]].max(axis=1)
    df["occ"] = df["occ_warps"]
    df["tensor_core"] = [tensor_core(r).split()[0] if ok else "" for r, ok in zip(rec, compiled)]
    df["loads"] = [load_class(r) if ok else "" for r, ok in zip(rec, compiled)]
    df["may_pick"] = df["may_pick"].astype(str) == "True"
    return df[REPORT_KEY + REPORT_COLS + ["may_pick", "error"]]


def compare_reports(base_csv: Path, head_csv: Path):
    df = _report_frame(base_csv).merge(_report_frame(head_csv), on=REPORT_KEY, how="outer",
                                       suffixes=("_b", "_h"))
    for c in ("may_pick_b", "may_pick_h"):
        df[c] = df[c].fillna(False).astype(bool)
    for c in ("regs", "spill", "occ"):
        df[f"{c}_x"] = ratio(df[f"{c}_h"], df[f"{c}_b"])
    df["starts_to_spill"] = df["may_pick_h"] & (df["spill_h"].fillna(0) > 0) & ~(
        df["may_pick_b"] & (df["spill_b"].fillna(0) > 0))
    same = (df["may_pick_b"] == df["may_pick_h"])
    for c in REPORT_COLS:
        b, h = df[f"{c}_b"], df[f"{c}_h"]
        same &= (b == h) | (b.isna() & h.isna())
    df["changed"] = ~same
    return df.sort_values(["starts_to_spill", "changed", "regs_x"], ascending=False, ignore_index=True,
                          kind="stable")


# ------------------------------------------------------------------------------------------------ output


def _x(v) -> str:
    return "" if v != v else "1" if v == 1 else f"{v:.4f}"


def _num(v) -> str:
    return "-" if v != v else f"{v:.4g}" if isinstance(v, float) and not float(v).is_integer() else f"{int(v)}"


def sweep_table(df) -> str:
    import pandas as pd

    view = df[["op", "mode", "seqlen", "params"]].copy()
    for c in SWEEP_COLS:
        view[f"{c}:base"] = df[f"{c}_b"].map(_num)
        view[f"{c}:head"] = df[f"{c}_h"].map(_num)
        view[f"{c}:x"] = df[f"{c}_x"].map(_x)
    if "gpu_ms_b" in df:
        for s in "bh":
            view[f"gpu ms {s} (p20-p80)"] = [f"{m:.4g} ({lo:.4g}-{hi:.4g})" for m, lo, hi in
                                            zip(df[f"gpu_ms_{s}"], df[f"gpu_p20_{s}"], df[f"gpu_p80_{s}"])]
        view["gpu x"] = ratio(df["gpu_ms_h"], df["gpu_ms_b"])
        view["gpu x"] = view["gpu x"].map(_x)
    with pd.option_context("display.width", 250, "display.max_colwidth", 40):
        return view.to_string(index=False)


def report_table(df, limit: int = 40) -> str:
    import pandas as pd

    relevant = df[df["may_pick_b"] | df["may_pick_h"] | df["changed"]]
    shown = relevant[relevant["changed"]].head(limit)
    lines = [f"report: {len(relevant)} pickable configs, {int(relevant['changed'].sum())} changed"
             + ("" if len(shown) else ", every ratio 1")]
    if len(shown):
        view = shown[["op", "shape", "seqlen", "kernel", "variant", "config"]].copy()
        for c in REPORT_COLS:
            view[c] = [f"{_num(b) if c in ('regs', 'spill', 'occ') else b}->{_num(h) if c in ('regs', 'spill', 'occ') else h}"
                       for b, h in zip(shown[f"{c}_b"].fillna(float("nan")), shown[f"{c}_h"].fillna(float("nan")))]
        view["pick"] = [f"{b:d}->{h:d}" for b, h in zip(shown["may_pick_b"], shown["may_pick_h"])]
        with pd.option_context("display.width", 250, "display.max_colwidth", 40):
            lines.append(view.to_string(index=False))
    return "\n".join(lines)


def figure(df, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = list(dict.fromkeys(df["op"]))
    fig, axes = plt.subplots(1, len(ops), figsize=(5 * len(ops), 3.6), squeeze=False)
    for ax, op in zip(axes[0], ops):
        for (mode, dtype, params), g in df[df["op"] == op].groupby(["mode", "dtype", "params"], sort=False):
            g = g.sort_values("seqlen")
            ax.plot(g["seqlen"], g["ms_x"], marker="o", label=f"{mode} {dtype} {params}")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set(title=op, xlabel="seqlen", ylabel="head / base modeled ms (model:H100)")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ GPU (untested)


def gpu_timings(sides, args, run_dirs) -> dict:
    """On a GPU: each side's sweep timed with do_bench, the sides alternating (A, B, A, B, ...) so drift falls on
    both alike; per side and case the median over rounds of ms, p20 and p80. Not cached (timings vary)."""
    import pandas as pd

    frames = {s.name: [] for s in sides}
    for r in range(args.rounds):
        for side in sides:
            out = run_dirs[side.name] / f"gpu{r}.csv"
            for stale in (out, out.with_name(out.name + ".partial")):  # a sweep would resume from them
                stale.unlink(missing_ok=True)
            run_step(side, ["-m", "triton_playground.sweeps", *(args.ops or ["all"]), "--out", "{out}",
                            *_sweep_args(args)], out, {})
            frames[side.name].append(pd.read_csv(out, dtype={"params": str}))
    result = {}
    for name, dfs in frames.items():
        df = pd.concat(dfs)
        result[name] = df[df["provider"] == "ours"].groupby(SWEEP_KEY)[["ms", "ms_p20", "ms_p80"]].median()
    return result


# ------------------------------------------------------------------------------------------------ main


def _parse(argv):
    p = argparse.ArgumentParser(prog="triton-playground compare",
                                usage="%(prog)s BASE [HEAD] [OP ...] [--fail-on-regression PCT] [options]",
                                description="A/B of two commits (HEAD left out: the working tree): each side's "
                                            "counted sweep and sm_90 report, base, head and head/base. "
                                            "docs/compare.md")
    p.add_argument("base", metavar="BASE", help="git ref of the base side")
    p.add_argument("rest", nargs="*", metavar="[HEAD] [OP ...]",
                   help="the head's git ref (default: the working tree, uncommitted changes included), then op "
                        "names as the sweep takes them (default: all)")
    p.add_argument("--fail-on-regression", type=float, metavar="PCT",
                   help="exit 1 if a case's modeled ms or bytes_dram grows by more than PCT%%, or a pickable "
                        "config starts to spill")
    p.add_argument("--out", type=Path, default=Path("out/compare"), help="where the tables and figure go")
    p.add_argument("--repo", type=Path, default=Path("."), help="the git repository (default: the cwd's)")
    p.add_argument("--cache", type=Path, help="worktrees and cached results (default: REPO/.cache/compare)")
    p.add_argument("--max-seqlen", type=int, help="the sweep's: skip longer cases (default: the quick plan's)")
    p.add_argument("--modes", help="the sweep's --modes (default: all the op has)")
    p.add_argument("--dtypes", help="the sweep's --dtypes (default: the op's, bf16)")
    p.add_argument("--full", action="store_true", help="the sweep's whole grid (hours), not the quick plan")
    p.add_argument("--sample", type=int, default=16, help="programs counted per launch (default 16; 0: all)")
    p.add_argument("--no-sweep", action="store_true", help="skip the counted sweep")
    p.add_argument("--no-report", action="store_true", help="skip the static sm_90 report")
    p.add_argument("--rounds", type=int, default=2, help="on a GPU: A/B rounds of do_bench timing (default 2)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        return _compare(args)
    except Refused as e:
        print(f"triton-playground compare: error: {e}", file=sys.stderr)
        return 2


def _compare(args) -> int:
    repo = Path(git(args.repo, "rev-parse", "--show-toplevel"))
    cache = (args.cache or repo / ".cache" / "compare").resolve()
    head_ref, ops = None, list(args.rest)
    if ops:
        try:
            git(repo, "rev-parse", "--verify", "--quiet", f"{ops[0]}^{{commit}}")
            head_ref = ops.pop(0)
        except Refused:
            pass
    args.ops = ops
    sides = [ref_side("base", repo, args.base, cache),
             ref_side("head", repo, head_ref, cache) if head_ref else working_side("head", repo)]
    print(f"compare: base {sides[0].label}, head {sides[1].label}; ops {' '.join(ops) or 'all'}")
    results = {s.name: side_results(s, args, cache) for s in sides}
    args.out.mkdir(parents=True, exist_ok=True)
    offending = []
    pct = args.fail_on_regression
    limit = 1 + (pct or 0) / 100
    if results["base"]["sweep"]:
        sweep = compare_sweeps(results["base"]["sweep"], results["head"]["sweep"])
        if _has_gpu():
            timed = gpu_timings(sides, args, {s.name: results[s.name]["run_dir"] for s in sides})
            for s in "bh":
                t = timed["base" if s == "b" else "head"].rename(
                    columns={"ms": f"gpu_ms_{s}", "ms_p20": f"gpu_p20_{s}", "ms_p80": f"gpu_p80_{s}"})
                sweep = sweep.merge(t, left_on=SWEEP_KEY, right_index=True, how="left")
        sweep.to_csv(args.out / "sweep_compare.csv", index=False)
        print("\nsweep, ours (counted, modeled on an H100; base, head and head/base x):")
        print(sweep_table(sweep))
        for r in sweep.to_dict("records"):
            worse = [f"{c} x{r[f'{c}_x']:.4f}" for c in GATED if r[f"{c}_x"] > limit]
            if r["worst_x"] == float("inf"):
                worse.append(f"head has no result ({r['error_h'] if isinstance(r['error_h'], str) else 'missing'})")
            if worse:
                offending.append(f"{r['op']} {r['mode']} {r['dtype']} seqlen={r['seqlen']} {r['params']}: "
                                 + ", ".join(worse))
        print(f"figure: {figure(sweep, args.out / 'compare_ms.png', f'{sides[0].label} -> {sides[1].label}')}")
    if results["base"]["report"]:
        report = compare_reports(results["base"]["report"], results["head"]["report"])
        report.to_csv(args.out / "report_compare.csv", index=False)
        print("\n" + report_table(report))
        for r in report[report["starts_to_spill"]].to_dict("records"):
            offending.append(f"{r['op']} {r['kernel']} [{r['variant']}] {r['config']} at {r['shape']} "
                             f"seqlen={r['seqlen']}: may be picked and spills {int(r['spill_h'])} bytes "
                             f"(base: {_num(r['spill_b'])}{'' if r['may_pick_b'] else ', not pickable'})")
    print(f"tables: {args.out.resolve()}/{{sweep,report}}_compare.csv")
    if pct is None:
        print(f"{len(offending)} case(s) worse in modeled ms, bytes_dram or spills (gate with --fail-on-regression)")
        return 0
    if offending:
        print(f"\nREGRESSION (> {pct:g}%): {len(offending)}")
        print("\n".join(f"  {line}" for line in offending))
        return 1
    print(f"\nno regression over {pct:g}%")
    return 0


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False
