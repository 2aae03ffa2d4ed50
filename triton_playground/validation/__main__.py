"""``triton-playground validate``: the H100 model against published H100 measurements.

Counts each measured program (or reads the shipped counts), models it, and prints per row the measured and
modeled milliseconds, then the errors per op x mode and overall, for the fit half and the held-out half apart.
Writes the CSV (one row per measurement) and a log-log figure of modeled against measured.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
from pathlib import Path

import pandas as pd


def _parse(argv):
    p = argparse.ArgumentParser(prog="triton-playground validate", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/validation.csv"),
                   help="CSV of every measurement, modeled (default out/validation.csv); the figure beside it, .png")
    p.add_argument("--recount", action="store_true",
                   help="count every program anew (minutes) instead of reading the shipped counts")
    p.add_argument("--counts", type=Path, default=None,
                   help="counts file to read, and to write with --recount (default: the shipped one)")
    p.add_argument("--fit", action="store_true",
                   help="fit the model's constants on the fit half and write kernels/perf/constants.json")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="counting processes")
    p.add_argument("--rows", action="store_true", help="print every row, not only the summary")
    return p.parse_args(argv)


def _count_group(rows):
    from . import run

    try:
        return run.count(rows)
    except Exception as e:  # noqa: BLE001  (one line in the report, the rest goes on)
        return {run.row_key(rows[0]): RuntimeError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")}


def _count(df, counts, path, workers):
    """Count the programs not in ``counts`` in ``workers`` processes, saving after each. The MoE's Liger programs
    hold ~10 GB of real tensors at 32k tokens: one process takes them in turn while the others count the rest."""
    from tqdm import tqdm

    from . import run

    groups = run.pending_programs(df, counts)
    heavy = [rows for rows in groups if run.is_heavy(rows[0])]
    light = [rows for rows in groups if not run.is_heavy(rows[0])]
    if not heavy and not light:
        return counts
    context = multiprocessing.get_context("fork")
    pools = [context.Pool(1), context.Pool(max(1, workers - 1))]
    try:
        pending = [pools[0].apply_async(_count_group, (rows,)) for rows in heavy]
        pending += [pools[1].apply_async(_count_group, (rows,)) for rows in light]
        with tqdm(total=len(pending), desc="counting", unit="program", file=sys.stderr) as bar:
            while pending:
                done = [p for p in pending if p.ready()]
                for result in done:
                    pending.remove(result)
                    for key, value in result.get().items():
                        if isinstance(value, Exception):
                            bar.write(f"  not counted: {key[:4]}: {value}")
                        else:
                            counts[key] = value
                    run.save_counts(counts, path)
                    bar.update()
                if not done:
                    pending[0].wait(0.5)
    finally:
        for pool in pools:
            pool.terminate()
    return counts


def figure(t: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = t.dropna(subset=["modeled_ms"])
    fig, ax = plt.subplots(figsize=(7, 6.5))
    for i, (op, g) in enumerate(t.groupby("op")):
        color = f"C{i}"
        for half, marker in (("fit", "o"), ("held-out", "s")):
            h = g[g["half"] == half]
            ax.scatter(h["measured_ms"], h["modeled_ms"], s=22, marker=marker, color=color,
                       facecolors=color if half == "fit" else "none", label=f"{op} ({half})", alpha=0.8)
    low = min(t["measured_ms"].min(), t["modeled_ms"].min()) / 1.5
    high = max(t["measured_ms"].max(), t["modeled_ms"].max()) * 1.5
    for factor, style in ((1, "-"), (1.25, "--"), (2, ":")):
        for f in {factor, 1 / factor}:
            ax.plot([low, high], [low * f, high * f], style, color="grey", lw=0.8)
    ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high), xlabel="measured ms (H100, Liger's data)",
           ylabel="modeled ms", title="The H100 model against published measurements\n(lines: equal, x1.25, x2)")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(t: pd.DataFrame, s: pd.DataFrame, stamped: str, png: Path) -> str:
    from . import run

    held = s[s["half"] == "held-out"]
    rows = ["| op | mode | rows | geomean error | worst | rows >= 20 us: geomean | worst | host-bound rows: worst "
            "| ranking right |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for _, r in held.iterrows():
        rows.append(f"| {r['op']} | {r['mode']} | {r['rows']} | x{r['geomean_error']:.3f} | x{r['worst_error']:.3f} | "
                    f"x{r['geomean_error_ge_20us']:.3f} | x{r['worst_error_ge_20us']:.3f} | "
                    f"x{r['worst_error_host_bound']:.3f} ({r['host_bound_rows']}) | "
                    f"{r['ranking_right']}/{r['ranking_pairs']} |".replace("xnan", "-"))
    fit = s[(s["op"] == "all") & (s["half"] == "fit")].iloc[0]
    excluded = t[t["excluded"].astype(bool)]
    lines = [
        "# The H100 model against published H100 measurements", "", stamped, "",
        f"Measurements: {len(t)} rows of {run.SOURCE} (`triton_playground/validation/data/README.md`: source, "
        f"commits, licence), on {', '.join(sorted(t['device'].unique()))}. Each row's program is counted under the "
        "interpreter and modeled (`triton_playground/kernels/perf/model.py`); the model's constants are fitted on "
        "the fit half (every other size of each sweep), and the table below is the **held-out** half. An error is "
        "max(modeled/measured, measured/modeled).", "",
        *rows, "",
        f"The fit half, for comparison: geomean error x{fit['geomean_error']:.3f}, worst x{fit['worst_error']:.3f} "
        f"({fit['rows']} rows).", "",
        f"![modeled against measured]({png.name})", "",
    ]
    if len(excluded):
        lines += [f"{len(excluded)} rows are excluded, their code cannot be run as it was measured:", ""]
        lines += [f"- {len(g)} rows of {g['op'].iloc[0]} / {g['provider'].iloc[0]}: {why}"
                  for why, g in excluded.groupby("excluded")]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse(argv)
    from ..kernels.perf import model as gpu
    from ..provenance import stamp
    from . import fit as fitting
    from . import run

    # before anything is written: the tree as the command found it
    stamped = stamp(" ".join(["triton-playground validate", *(sys.argv[1:] if argv is None else argv)]))
    path = args.counts or run.COUNTS
    df = run.rows()
    counts = {} if args.recount else run.load_counts(path)
    missing = sum(len(rows) for rows in run.pending_programs(df, counts))
    if missing:
        print(f"counting {missing} rows' programs ({'--recount' if args.recount else 'not in ' + str(path)})",
              file=sys.stderr)
        counts = _count(df, counts, path, args.workers)
    constants = gpu.CONSTANTS
    if args.fit:
        constants, loss, n = fitting.fit(df, counts, log=lambda s: print(s, file=sys.stderr))
        fitting.write(constants, fitted_on=f"{n} fit rows of {run.MEASUREMENTS.name}")
        print(f"fitted on {n} rows: " + ", ".join(f"{k}={v:.3g}" for k, v in constants.__dict__.items()))
    t = run.table(df, counts, constants)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t.to_csv(args.out, index=False)
    png = args.out.with_suffix(".png")
    figure(t, png)
    with pd.option_context("display.width", 200, "display.max_rows", 1000):
        if args.rows:
            shown = ["op", "provider", "mode", "x", "half", "measured_p20_ms", "measured_ms", "measured_p80_ms",
                     "modeled_ms", "ratio"]
            print(t[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        s = run.summary(t)
        print(s.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    excluded = t[t["excluded"].astype(bool)]
    if len(excluded):
        print(f"\n{len(excluded)} rows excluded (their code cannot be run as measured):")
        for why, g in excluded.groupby("excluded"):
            print(f"  {len(g)} {g['op'].iloc[0]} {g['provider'].iloc[0]}: {why}")
    md = args.out.with_suffix(".md")
    md.write_text(markdown(t, s, stamped, png))
    held = s[(s["op"] == "all") & (s["half"] == "held-out")].iloc[0]
    print(f"\nheld-out: rows >= 20 us: geomean error x{held['geomean_error_ge_20us']:.3f}, worst "
          f"x{held['worst_error_ge_20us']:.3f}; host-bound rows worst x{held['worst_error_host_bound']:.3f}; "
          f"ranking {held['ranking_right']}/{held['ranking_pairs']}"
          + ("" if math.isnan(held["geomean_error"]) else f"; all rows geomean x{held['geomean_error']:.3f}"))
    print(f"wrote {args.out}, {md} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
