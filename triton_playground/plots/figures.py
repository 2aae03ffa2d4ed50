"""One figure per op: per (mode, dtype, params) group, speedup over eager above achieved throughput, vs seqlen.

Lines: one per provider, device and commit (:func:`build_lines`), so rows of two devices, of a model and a GPU, or of
two commits are never joined into one line. Colour is the provider's (:func:`provider_color`, the same in every
figure); the line style says what the rows are: solid for GPU timings, dashed for rows modeled from counted work
(``model:*`` devices: modeled from counted work, not measured), dotted for interpreter wall-clock timings.

Band (where the rows have ``ms_p20``/``ms_p80``): the provider's own p20-p80 spread with eager's median held fixed,
i.e. speedup x ms/p80 .. speedup x ms/p20 (= eager_ms/p80 .. eager_ms/p20), and the same scaling of the throughput.
Eager's own spread shows as the band around its line at 1.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

GROUP = ["mode", "dtype", "params"]
MODE_ORDER = {"fwd": 0, "bwd": 1, "fwd+bwd": 2}

# a provider's colour in every figure; names not here get one of FALLBACK_COLORS by a hash of the name
PROVIDER_COLORS = {
    "ours": "#d62728", "eager": "#1f77b4", "compile": "#ff7f0e", "sdpa": "#2ca02c", "flex": "#9467bd",
    "torch_topk": "#8c564b", "torch_topk_compile": "#c49c94", "grouped_mm": "#e377c2", "hf": "#17becf",
    "hf_apply": "#8c6d31", "hf_compile": "#0e7c86", "liger": "#bcbd22", "fla": "#393b79",
}
FALLBACK_COLORS = ["#637939", "#7b4173", "#843c39", "#5254a3", "#e7ba52", "#ce6dbd", "#6b6ecf", "#b5cf6b"]
STYLES = {"measured": "-", "modeled": "--", "interpreter": ":"}
MARKERS = "os^Dv<>p"


def provider_color(provider: str) -> str:
    """The provider's fixed colour; an unknown name gets a colour from its CRC32 (the same in every run)."""
    if provider in PROVIDER_COLORS:
        return PROVIDER_COLORS[provider]
    return FALLBACK_COLORS[zlib.crc32(str(provider).encode()) % len(FALLBACK_COLORS)]


def kind_of(device) -> str:
    """'modeled' (a ``model:*`` device), 'interpreter' (interpreter wall-clock) or 'measured' (a GPU)."""
    device = str(device)
    return "modeled" if device.startswith("model:") else "interpreter" if device == "interpreter" else "measured"


def device_label(device) -> str:
    return {"modeled": f"{device} (modeled, not measured)",
            "interpreter": "interpreter (interpreter timings, not performance)"}.get(kind_of(device), str(device))


@dataclass
class Line:
    """The rows of one provider on one device at one commit, sorted by seqlen, and how they are drawn."""

    label: str
    provider: str
    device: str
    commit: str
    rows: pd.DataFrame
    marker: str = "o"

    @property
    def kind(self) -> str:
        return kind_of(self.device)

    def style(self) -> dict:
        return {"color": provider_color(self.provider), "linestyle": STYLES[self.kind], "marker": self.marker,
                "linewidth": 2.2 if self.provider == "ours" else 1.3, "markersize": 4, "label": self.label}


def build_lines(df: pd.DataFrame, several_devices: bool | None = None, several_commits: bool | None = None):
    """One :class:`Line` per (provider, device, commit) of ``df``'s rows; ``ours`` first.

    The label is the provider, with the device (:func:`device_label`) and the commit added where the input holds
    several (by default: where ``df`` does). Each device/commit pair gets its own marker.
    """
    if several_devices is None:
        several_devices = df["device"].nunique(dropna=False) > 1
    if several_commits is None:
        several_commits = df["commit"].nunique(dropna=False) > 1
    runs = sorted({(str(d), str(c)) for d, c in zip(df["device"], df["commit"])})
    lines = []
    for (provider, device, commit), rows in df.groupby(["provider", "device", "commit"], sort=False, dropna=False):
        label = str(provider)
        if several_devices:
            label += " · " + device_label(device)
        if several_commits:
            label += " · " + str(commit)
        marker = MARKERS[runs.index((str(device), str(commit))) % len(MARKERS)]
        lines.append(Line(label, str(provider), str(device), str(commit), rows.sort_values("seqlen"), marker))
    return sorted(lines, key=lambda line: (line.provider != "ours", line.provider, line.label))


def throughput_metric(df: pd.DataFrame) -> tuple[str, str, str]:
    """(column, unit, ceiling column): TFLOP/s for an op nearer the matmul roof, else GB/s.

    Nearer: the median over rows of (least FLOPs / matmul rate) / (least bytes / copy bandwidth), from
    ``flops_useful``/``bytes_min`` where the rows have them, else from ``tflops``/``gbps`` (the same ratio).
    """
    def col(name):
        return pd.to_numeric(df[name], errors="coerce") if name in df else pd.Series(np.nan, index=df.index)

    # seconds at each roof: FLOPs / (TFLOP/s x 1e12) against bytes / (GB/s x 1e9)
    ratio = (col("flops_useful") / col("matmul_tflops")) / (col("bytes_min") / col("copy_gbps")) / 1e3
    fallback = (col("tflops") / col("matmul_tflops")) / (col("gbps") / col("copy_gbps"))
    ratio = ratio.where(np.isfinite(ratio), fallback)
    ratio = ratio[np.isfinite(ratio)]
    if len(ratio) and ratio.median() >= 1:
        return "tflops", "TFLOP/s", "matmul_tflops"
    return "gbps", "GB/s", "copy_gbps"


def band(rows: pd.DataFrame, column: str):
    """(seqlen, low, high) of ``column`` over the rows' p20-p80 time spread, or None where no row has one."""
    need = [column, "ms", "ms_p20", "ms_p80"]
    if any(c not in rows for c in need):
        return None
    r = rows[need + ["seqlen"]].apply(pd.to_numeric, errors="coerce").dropna()
    r = r[(r[need] > 0).all(axis=1)]
    if r.empty:
        return None
    return r["seqlen"].to_numpy(), (r[column] * r["ms"] / r["ms_p80"]).to_numpy(), \
        (r[column] * r["ms"] / r["ms_p20"]).to_numpy()


def _points(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    r = rows[["seqlen", column]].apply(pd.to_numeric, errors="coerce").dropna()
    return r[r[column] > 0]


def params_text(params) -> str:
    try:
        return ", ".join(f"{k}={v}" for k, v in json.loads(params).items() if k not in ("rows", "tokens"))
    except (TypeError, ValueError, AttributeError):
        return str(params)


def _times(v, _pos) -> str:
    return f"{v:g}×"


def log_ticks(low: float, high: float) -> list[float]:
    """Ticks of a log axis from ``low`` to ``high``: 1-2-5 steps, finer where the range is narrow."""
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 6, 8)):
        ticks = [m * 10.0**e for e in range(-4, 5) for m in mantissas if low <= m * 10.0**e <= high]
        if len(ticks) >= 3:
            return ticks
    return ticks


def _draw_speedup(ax, lines: list[Line]) -> bool:
    banded = False
    for line in lines:
        p = _points(line.rows, "speedup")
        if len(p):
            ax.plot(p["seqlen"], p["speedup"], **line.style())
        b = band(line.rows, "speedup")
        if b is not None:
            ax.fill_between(*b, color=provider_color(line.provider), alpha=0.18, linewidth=0)
            banded = True
    ax.axhline(1.0, color="black", linewidth=0.8, zorder=0)
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, 0.8), max(high, 1.25))
    ax.yaxis.set_major_locator(FixedLocator(log_ticks(*ax.get_ylim())))
    ax.yaxis.set_major_formatter(FuncFormatter(_times))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("speedup over eager", fontsize=8)
    return banded


def _draw_throughput(ax, lines: list[Line], metric: tuple[str, str, str]) -> None:
    column, unit, ceiling = metric
    for line in lines:
        p = _points(line.rows, column)
        if len(p):
            ax.plot(p["seqlen"], p[column], **dict(line.style(), label="_" + line.label))
        b = band(line.rows, column)
        if b is not None:
            ax.fill_between(*b, color=provider_color(line.provider), alpha=0.18, linewidth=0)
    rows = pd.concat([line.rows for line in lines])
    if ceiling in rows:
        roofs = rows.assign(roof=pd.to_numeric(rows[ceiling], errors="coerce")).dropna(subset=["roof"])
        per_device = roofs.groupby("device", sort=True)["roof"].first()
        for i, (roof, devices) in enumerate(per_device.index.groupby(per_device.to_numpy()).items()):
            ax.axhline(roof, color="black", linestyle="--", linewidth=1.0, label="_ceiling")
            ax.annotate(f"{', '.join(map(str, devices))}: {roof:g} {unit}", (0.01 + 0.98 * (i % 2), roof),
                        xycoords=("axes fraction", "data"), xytext=(0, 2), textcoords="offset points",
                        fontsize=6, ha=("left", "right")[i % 2])
    if ax.has_data():
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 1.6)  # room for the ceiling's label
        ax.yaxis.set_major_locator(FixedLocator(log_ticks(low, high * 1.6)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.text(0.5, 0.5, f"no {unit} in these rows", ha="center", va="center", transform=ax.transAxes,
                fontsize=8)
    ax.set_ylabel(f"achieved {unit}", fontsize=8)


def _group_key(item):
    (mode, dtype, _params), _ = item
    return MODE_ORDER.get(mode, len(MODE_ORDER)), str(mode), str(dtype)


def draw_op(df: pd.DataFrame, op: str, lines_of=build_lines, stamp: str = "") -> plt.Figure:
    """The figure of one op's rows (successful ones): two panels (speedup, throughput) per GROUP key.

    ``lines_of(rows)`` makes a group's lines (a caller labels them over all its inputs); ``stamp`` ends the title.
    """
    metric = throughput_metric(df)
    groups = sorted(df.groupby(GROUP, sort=False), key=_group_key)  # stable: params keep the CSV's order
    n_params = df["params"].nunique()
    cols = n_params if 2 <= n_params <= 6 else min(4, len(groups))  # a row per mode and dtype where it fits
    rows = math.ceil(len(groups) / cols)
    fig = plt.figure(figsize=(4.3 * cols + 2.6, 4.6 * rows + 0.8), layout="constrained")
    outer = fig.add_gridspec(rows, cols)
    legend, banded = {}, False
    for i, ((mode, dtype, params), group) in enumerate(groups):
        inner = outer[i // cols, i % cols].subgridspec(2, 1)
        top = fig.add_subplot(inner[0])
        bottom = fig.add_subplot(inner[1], sharex=top)
        lines = lines_of(group)
        banded |= _draw_speedup(top, lines)
        _draw_throughput(bottom, lines, metric)
        legend.update({line.label: line for line in lines})
        top.set_title(f"{op} · {mode} · {dtype}\n{params_text(params)}", fontsize=8)
        top.tick_params(labelbottom=False)
        bottom.set_xlabel("sequence length (tokens)", fontsize=8)
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="major", alpha=0.3)
    handles = [plt.Line2D([], [], **line.style()) for line in legend.values()]
    handles.append(plt.Line2D([], [], color="black", linestyle="--", label=f"ceiling ({metric[2]})"))
    if banded:
        handles.append(Patch(color="grey", alpha=0.3, label="p20–p80 of own time"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"{op}: speedup over eager (log) and achieved {metric[1]} vs sequence length\n{stamp}",
                 fontsize=10)
    return fig
