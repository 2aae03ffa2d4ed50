"""python -m plots CSV [CSV ...] [--out FILE.png]

Two figures from sweep CSVs: speedup over eager PyTorch versus sequence length (``FILE.png``) and achieved
percent of the roofline (``FILE_roofline.png``). One panel per op/mode/dtype/params, one line per provider, log2
x-axis, the device, commit and date in the title.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

PANEL = ["op", "mode", "dtype", "params"]


def _panel_title(key) -> str:
    op, mode, dtype, params = key
    extra = ", ".join(f"{k}={v}" for k, v in json.loads(params).items() if k not in ("rows", "tokens"))
    return f"{op} {mode} {dtype}\n{extra}"


def figure(df: pd.DataFrame, column: str, ylabel: str, title: str, out: Path, baseline=None) -> Path:
    panels = list(df.groupby(PANEL, sort=False))
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    providers = sorted(df["provider"].unique(), key=lambda p: (p != "ours", p))
    colors = {p: plt.cm.tab10(i % 10) for i, p in enumerate(providers)}
    for ax, (key, group) in zip(axes.flat, panels):
        for provider, g in group.groupby("provider"):
            g = g.dropna(subset=[column]).sort_values("seqlen")
            if len(g):
                ax.plot(g["seqlen"], g[column], marker="o", label=provider, color=colors[provider],
                        linewidth=2.2 if provider == "ours" else 1.2)
        if baseline is not None:
            ax.axhline(baseline, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xscale("log", base=2)
        ax.set_title(_panel_title(key), fontsize=8)
        ax.set_xlabel("sequence length (tokens)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colors[p], marker="o", label=p) for p in providers]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m plots", description="Plot sweep CSVs.")
    parser.add_argument("csv", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="speedup figure (default: the first CSV with .png)")
    args = parser.parse_args(argv)
    df = pd.concat([pd.read_csv(p, dtype={"params": str}) for p in args.csv], ignore_index=True)
    df = df[df["error"].isna() | (df["error"] == "")] if "error" in df else df
    if df.empty:
        raise SystemExit("no successful rows to plot")
    out = args.out or args.csv[0].with_suffix(".png")
    devices = ", ".join(sorted(df["device"].astype(str).unique()))
    commits = ", ".join(sorted(df["commit"].astype(str).unique()))
    day = str(df["timestamp"].max())[:10]
    note = " — interpreter timings, NOT performance" if "interpreter" in devices else ""
    stamp = f"{devices} · commit {commits} · {day}{note}"
    speed = figure(df, "speedup", "speedup over eager PyTorch (×)", f"Speedup vs sequence length — {stamp}", out,
                   baseline=1.0)
    roof = figure(df, "pct_roofline", "% of roofline", f"Achieved % of roofline — {stamp}",
                  out.with_name(out.stem + "_roofline.png"))
    print(f"wrote {speed} and {roof}")


if __name__ == "__main__":
    main()
