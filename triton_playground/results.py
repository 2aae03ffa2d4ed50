"""triton-playground results [--out docs/results] [--full] [--resume]

Every generated result in ``docs/results/`` from one command, each Markdown file stamped with the command, commit,
date and machine (:func:`triton_playground.provenance.stamp`), each figure with its devices, commit and date:

* ``sweep.csv``: the sweep of every op against its peers (the quick plan, or ``--full``); without a GPU, counted and
  modeled on an H100 (``device=model:H100``);
* ``sweep_<op>.png``, ``sweep_summary.csv``, ``sweep_peers.csv``: the plots of it (``triton-playground plot``);
* ``validation.{csv,md,png}``: the H100 model against published H100 measurements (``triton-playground validate``,
  from the shipped counts);
* ``sweep.md``: at each op's headline size, ours against eager and each peer, with the model's held-out error
  beside each modeled verdict; then the geometric-mean speedups and every figure;
* ``README.md``: what is here and how it was made.

The sweep starts afresh (a result mixes no commits) unless ``--resume`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

# Our ops whose peers the validation measured (its op names): the model's held-out error on those rows goes beside
# the op's verdicts; the other ops get the error over every held-out row.
VALIDATED_AS = {"layer_norm": ["layer_norm"], "rms_norm": ["fused_add_rms_norm", "megatron_rms_norm"],
                "mlp": ["relu_squared"], "moe": ["fused_moe"]}


def _parse(argv):
    parser = argparse.ArgumentParser(prog="triton-playground results", description=(
        "Every generated result of docs/results/ from one command: the sweep of every op against its peers (counted "
        "and modeled on an H100 without a GPU), its figures and tables, the model's validation, and sweep.md (each "
        "op's verdicts at its headline size with the model's error beside them), each stamped with the command, "
        "commit, date and machine."))
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="the folder (default docs/results)")
    parser.add_argument("--full", action="store_true", help="sweep every case of each op (hours without a GPU)")
    parser.add_argument("--resume", action="store_true", help="continue the sweep in OUT/sweep.csv")
    return parser.parse_args(argv)


def table(df: pd.DataFrame, formats: dict | None = None) -> list[str]:
    """``df`` as Markdown lines; ``formats``: column -> format spec (blank where the value is missing)."""
    formats = formats or {}

    def cell(column, value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return format(value, formats[column]) if column in formats else str(value)

    lines = ["| " + " | ".join(df.columns) + " |", "| " + " | ".join("---" for _ in df.columns) + " |"]
    lines += ["| " + " | ".join(cell(c, v) for c, v in row.items()) + " |" for _, row in df.iterrows()]
    return lines


def model_errors(validation: pd.DataFrame) -> dict:
    """(our op or "all", mode) -> the geometric-mean error of the held-out validation rows behind it."""
    from triton_playground.validation.run import error

    held = validation[(validation["half"] == "held-out") & validation["ratio"].notna()]

    def geomean_error(rows) -> float:
        return error(rows["ratio"])[0]  # the validation's own measure (run.summary's geomean_error)

    out = {("all", "all"): geomean_error(held)}
    for mode in held["mode"].unique():
        out[("all", mode)] = geomean_error(held[held["mode"] == mode])
        for op, names in VALIDATED_AS.items():
            out[(op, mode)] = geomean_error(held[held["op"].isin(names) & (held["mode"] == mode)])
    return out


def headline(sweep: pd.DataFrame, errors: dict) -> pd.DataFrame:
    """Ours against eager and each peer at the headline size (``plots.summary.versus``), with the model's error."""
    from triton_playground.plots.summary import versus

    v = versus(sweep, with_eager=True)
    v = v[v["speedup_vs_peer"].notna()]
    modeled = v["device"].astype(str).str.startswith("model:")
    error = [errors.get((op, mode), float("nan")) for op, mode in zip(v["op"], v["mode"])]
    error = [e if not math.isnan(e) else errors.get(("all", mode), float("nan")) for e, mode in zip(error, v["mode"])]
    return pd.DataFrame({
        "op": v["op"], "mode": v["mode"], "versus": v["peer"], "headline size": v["headline"],
        "ours (ms)": v["ours_ms"], "theirs (ms)": v["peer_ms"], "speedup": v["speedup_vs_peer"],
        "model error": [f"x{e:.2f}" + ("" if op in VALIDATED_AS else " (all ops)") if m and not math.isnan(e) else ""
                        for e, op, m in zip(error, v["op"], modeled)],
        "FLOPs ours/theirs": v["flops_exec ours/peer"], "bytes ours/theirs": v["bytes_exec ours/peer"],
        "DRAM bytes ours/theirs": v["bytes_dram ours/peer"],
    })


def sweep_markdown(sweep: pd.DataFrame, errors: dict, stamped: str, figures: list[Path]) -> str:
    from triton_playground.plots.summary import summary

    head = headline(sweep, errors)
    means = summary(sweep)
    means = means[means["provider"] != "eager"][["op", "mode", "dtype", "device", "provider", "rows", "errors",
                                                "geomean_speedup"]]
    modeled = sweep["device"].astype(str).str.startswith("model:").any()
    lines = ["# Every op against eager and its peers", "", stamped, ""]
    if modeled:
        lines += ["No GPU made these numbers: each case was counted under the Triton interpreter at its real size and "
                  "modeled on an H100 (`device=model:H100`, [docs/performance-model.md](../performance-model.md)). "
                  "*model error* is the model's geometric-mean error on the held-out published H100 measurements of "
                  "the same op class ([validation.md](validation.md)); *(all ops)* where none was measured.", ""]
    lines += ["## At the headline size", "",
              "speedup = their ms / ours (> 1: ours is faster); the work ratios are counted, ours over theirs: *bytes* "
              "every load and store executed, *DRAM bytes* what the model estimates reaches HBM (L2 hits taken out).",
              "",
              *table(head, {"ours (ms)": ".4g", "theirs (ms)": ".4g", "speedup": ".2f", "FLOPs ours/theirs": ".2f",
                            "bytes ours/theirs": ".2f", "DRAM bytes ours/theirs": ".2f"}), "",
              "## Geometric-mean speedup over eager, over every size", "",
              *table(means, {"geomean_speedup": ".2f"}), "", "## Figures", ""]
    lines += [f"![{path.stem}]({path.name})" for path in figures]
    return "\n".join(lines) + "\n"


def readme(stamped: str, full: bool) -> str:
    return "\n".join([
        "# Results, generated", "", stamped, "",
        "Every file here is written by one command; none is edited by hand. To make them again (minutes without a "
        "GPU" + ("; `--full`: hours" if not full else "") + "):", "",
        "```bash", "triton-playground results" + (" --full" if full else ""), "```", "",
        "- [sweep.md](sweep.md): every op against eager and each peer at its headline size, with the H100 model's "
        "held-out error beside each modeled verdict; the geometric-mean speedups; the figures `sweep_<op>.png`.",
        "- `sweep.csv`: every row of the sweep (its columns: [docs/sweeps-and-plots.md](../sweeps-and-plots.md)); "
        "`sweep_summary.csv`, `sweep_peers.csv`: the plot's tables.",
        "- [validation.md](validation.md): the H100 model against Liger-Kernel's published H100 measurements "
        "(held-out errors per op and mode), with `validation.csv` (every row) and `validation.png`.", ""])


def main(argv=None) -> int:
    args = _parse(argv)
    from triton_playground.plots.__main__ import main as plot
    from triton_playground.provenance import stamp
    from triton_playground.sweeps.__main__ import main as sweep
    from triton_playground.validation.__main__ import main as validate

    stamped = stamp(" ".join(["triton-playground results", *(sys.argv[1:] if argv is None else argv)]))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "sweep.csv"
    if csv.exists() and not args.resume:
        csv.unlink()  # a fresh sweep: the results are of one commit
    for old in out.glob("sweep_*.png"):
        old.unlink()
    print(f"== the sweep ({'every case' if args.full else 'the quick plan'}) -> {csv}", flush=True)
    sweep(["all", "--out", str(csv)] + (["--full"] if args.full else []))
    print(f"\n== its figures and tables -> {out}/sweep_*", flush=True)
    plot([str(csv), "--out", str(out / "sweep")])
    print(f"\n== the model against published H100 measurements -> {out}/validation.*", flush=True)
    validate(["--out", str(out / "validation.csv")])
    validation = pd.read_csv(out / "validation.csv")
    figures = sorted(out.glob("sweep_*.png"))
    (out / "sweep.md").write_text(sweep_markdown(pd.read_csv(csv, dtype={"params": str}), model_errors(validation),
                                                 stamped, figures))
    (out / "README.md").write_text(readme(stamped, args.full))
    print(f"\nwrote {out}/sweep.md, {out}/README.md, {out}/validation.md and {len(figures)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
