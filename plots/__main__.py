"""python -m plots CSV [CSV ...] [--out FILE.png]

Two figures from sweep CSVs: speedup over eager PyTorch versus sequence length (``FILE.png``) and achieved
percent of the roofline (``FILE_roofline.png``). One panel per op/mode/dtype/params, one line per provider (per
provider, device and commit when the CSVs hold several devices or commits), log2 x-axis, the device, commit and
date in the title.
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
# the columns the figures read; a CSV without them is not a sweep's
REQUIRED = PANEL + ["provider", "seqlen", "speedup", "pct_roofline", "device", "commit", "timestamp"]


class NotASweep(Exception):
    """An input that is not a readable sweep CSV; its message names the file and what is wrong."""


def load(paths: list[Path]) -> pd.DataFrame:
    """The rows of every CSV, or NotASweep for the first path that is missing, unreadable or not a sweep."""
    frames = []
    for path in paths:
        try:
            frame = pd.read_csv(path, dtype={"params": str})
        except FileNotFoundError:
            raise NotASweep(f"{path}: no such file") from None
        except IsADirectoryError:
            raise NotASweep(f"{path} is a directory; give the sweep CSV files in it") from None
        except pd.errors.EmptyDataError:
            raise NotASweep(f"{path} is empty, not a sweep CSV") from None
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
            raise NotASweep(f"{path} cannot be read as a CSV: {str(e).splitlines()[0]}") from None
        missing = [c for c in REQUIRED if c not in frame]
        if missing:
            raise NotASweep(f"{path} is not a sweep CSV (python -m sweeps writes those): "
                            f"it has no column {', '.join(missing)}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def line_labels(df: pd.DataFrame) -> pd.Series:
    """Each row's line in its panel: the provider, with the device and the commit where ``df`` holds several.

    Rows of two devices (or commits) are two measurements, not one: on a single provider line they would make it
    zig-zag between the machines.
    """
    labels = df["provider"].astype(str)
    for column in ("device", "commit"):
        if df[column].nunique(dropna=False) > 1:
            labels = labels + " · " + df[column].astype(str)
    return labels


def _panel_title(key) -> str:
    op, mode, dtype, params = key
    extra = ", ".join(f"{k}={v}" for k, v in json.loads(params).items() if k not in ("rows", "tokens"))
    return f"{op} {mode} {dtype}\n{extra}"


def draw(df: pd.DataFrame, column: str, ylabel: str, title: str, baseline=None) -> plt.Figure:
    """The figure of ``column`` versus seqlen: one panel per PANEL key, one line per :func:`line_labels` label."""
    df = df.assign(line=line_labels(df))
    panels = list(df.groupby(PANEL, sort=False))
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    provider_of = dict(zip(df["line"], df["provider"]))
    lines = sorted(provider_of, key=lambda line: (provider_of[line] != "ours", line))
    colors = {line: plt.cm.tab10(i % 10) for i, line in enumerate(lines)}
    for ax, (key, group) in zip(axes.flat, panels):
        for line, g in group.groupby("line"):
            g = g.dropna(subset=[column]).sort_values("seqlen")
            if len(g):
                ax.plot(g["seqlen"], g[column], marker="o", label=line, color=colors[line],
                        linewidth=2.2 if provider_of[line] == "ours" else 1.2)
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
    handles = [plt.Line2D([], [], color=colors[line], marker="o", label=line) for line in lines]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 0.95))
    return fig


def figure(df: pd.DataFrame, column: str, ylabel: str, title: str, out: Path, baseline=None) -> Path:
    fig = draw(df, column, ylabel, title, baseline)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m plots", description="Plot sweep CSVs.")
    parser.add_argument("csv", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="speedup figure (default: the first CSV with .png)")
    args = parser.parse_args(argv)
    try:
        df = load(args.csv)
    except NotASweep as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")  # one line, no traceback: the input is wrong, not the code
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
