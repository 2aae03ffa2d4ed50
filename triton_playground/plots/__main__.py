"""triton-playground plot CSV [CSV ...] [--out DIR_OR_PREFIX]

From sweep CSVs: one figure per op, ``PREFIX_<op>.png`` (see plots/figures.py: per mode/dtype/params, speedup over
eager and achieved TFLOP/s or GB/s against the ceiling, versus sequence length; a line per provider, device and
commit, modeled rows dashed), and a summary table (plots/summary.py), printed and written to
``PREFIX_summary.csv``; after the plots, ours against each peer at the headline size (``plots.summary.versus``),
printed and written to ``PREFIX_peers.csv``. An input that is not a sweep CSV gets one line on stderr and exit
code 2.
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from triton_playground.plots.figures import build_lines, device_label, draw_op, kind_of  # noqa: E402
from triton_playground.plots.summary import failed, render, summary, versus  # noqa: E402

# the columns the figures need; a CSV without them is not a sweep's
REQUIRED = ["op", "mode", "dtype", "params", "provider", "seqlen", "speedup", "device", "commit", "timestamp"]
# columns read where present (older CSVs, or rows that have none): missing ones are read as empty
OPTIONAL = ["ms", "ms_p20", "ms_p80", "tflops", "gbps", "error", "copy_gbps", "matmul_tflops", "flops_exec",
            "flops_useful", "bytes_exec", "bytes_min"]


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
            raise NotASweep(f"{path} is not a sweep CSV (triton-playground sweep writes those): "
                            f"it has no column {', '.join(missing)}")
        frames.append(frame.assign(**{c: float("nan") for c in OPTIONAL if c not in frame}))
    return pd.concat(frames, ignore_index=True)


def prefix_of(out: str | None, first: Path) -> Path:
    """Where the files go: ``<prefix>_<op>.png`` and ``<prefix>_summary.csv``.

    No ``--out``: the first CSV less its suffix. A directory (existing, or written with a trailing slash): the
    first CSV's name in it. A ``.png`` name: that name less ``.png``. Anything else: the prefix itself.
    """
    if out is None:
        return first.with_suffix("")
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        return Path(out) / first.stem
    return Path(out).with_suffix("") if out.lower().endswith(".png") else Path(out)


def _slug(name) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "-" for c in str(name))


def _stamp(df: pd.DataFrame) -> str:
    devices = ", ".join(device_label(d) for d in sorted(df["device"].astype(str).unique()))
    dtypes = ", ".join(sorted(df["dtype"].astype(str).unique()))
    commits = ", ".join(sorted(df["commit"].astype(str).unique()))
    return f"{devices} · {dtypes} · commit {commits} · {str(df['timestamp'].max())[:10]}"


def write_figures(df: pd.DataFrame, prefix: Path) -> list[Path]:
    """One PNG per op of ``df``'s successful rows; a line per provider, device and commit (labels over all ops)."""
    lines_of = functools.partial(build_lines, several_devices=df["device"].nunique(dropna=False) > 1,
                                 several_commits=df["commit"].nunique(dropna=False) > 1)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for op, rows in df.groupby("op", sort=False):
        fig = draw_op(rows, str(op), lines_of, _stamp(rows))
        path = prefix.with_name(f"{prefix.name}_{_slug(op)}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(prog="triton-playground plot", description="Plot sweep CSVs: a PNG per op and a "
                                     "summary table (geometric-mean speedup over eager per op and provider).")
    parser.add_argument("csv", nargs="+", type=Path)
    parser.add_argument("--out", help="a directory or a file prefix: writes PREFIX_<op>.png and PREFIX_summary.csv "
                        "(default: the first CSV less .csv)")
    args = parser.parse_args(argv)
    try:
        df = load(args.csv)
    except NotASweep as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")  # one line, no traceback: the input is wrong, not the code
    prefix = prefix_of(args.out, args.csv[0])
    table = summary(df)
    print(render(table))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(prefix.with_name(prefix.name + "_summary.csv"), index=False)
    ok = df[~failed(df)]
    if ok.empty:
        raise SystemExit("no successful rows to plot")
    written = write_figures(ok, prefix)
    print(f"wrote {prefix.name}_summary.csv and {len(written)} figure(s) in {prefix.parent}: "
          + ", ".join(p.name for p in written))
    peers = versus(df)
    if not peers.empty:
        print("\nours against each peer at the headline size (speedup_vs_peer = peer ms / ours; work ratios "
              "ours / peer, counted):")
        print(render(peers, digits=4))
        peers.to_csv(prefix.with_name(prefix.name + "_peers.csv"), index=False)
        print(f"wrote {prefix.name}_peers.csv")
    kinds = {kind_of(d) for d in ok["device"].unique()}
    if "modeled" in kinds:
        print("note: model:* rows are modeled from counted work (triton-playground validate gives the model's "
              "error against published H100 measurements), not measured")
    if "interpreter" in kinds:
        print("note: interpreter rows are the Triton interpreter's wall-clock, not performance")

if __name__ == "__main__":
    main()
