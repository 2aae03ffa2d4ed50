"""The summary tables. :func:`summary`: per op, mode, dtype, device and provider, the geometric-mean speedup over
eager. :func:`versus`: per op, mode, dtype, device and peer, ours against that peer at the headline size.

``rows``: the successful rows the mean is over; ``errors``: the rows with an error (left out of every mean).
For modeled rows (``model:*`` devices) also the geometric means of ``flops_exec / flops_useful`` and
``bytes_exec / bytes_min``: how much more work and traffic the counted run did than the op's least. A ratio that
is not positive (e.g. no FLOPs counted: ``flops_exec`` 0) is left out of its mean; a mean of no rows is blank.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from triton_playground.plots.figures import MODE_ORDER, kind_of

KEYS = ["op", "mode", "dtype", "device", "provider"]


def failed(df: pd.DataFrame) -> pd.Series:
    """Whether each row records an error."""
    if "error" not in df:
        return pd.Series(False, index=df.index)
    error = df["error"]
    return error.notna() & (error.astype(str).str.strip() != "")


def geomean(values) -> float:
    """The geometric mean of the positive, finite ``values``; NaN when there are none."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.exp(np.log(v).mean())) if len(v) else float("nan")


def _ratio(df: pd.DataFrame, num: str, den: str) -> pd.Series:
    if num not in df or den not in df:
        return pd.Series(np.nan, index=df.index)
    return pd.to_numeric(df[num], errors="coerce") / pd.to_numeric(df[den], errors="coerce")


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per KEYS value of ``df`` (errors included: they are counted, not averaged)."""
    bad = failed(df)
    records = []
    for key, group in df.groupby(KEYS, sort=False, dropna=False):
        good = group[~bad.loc[group.index]]
        modeled = kind_of(key[KEYS.index("device")]) == "modeled"
        records.append({
            **dict(zip(KEYS, key)),
            "rows": len(good),
            "errors": len(group) - len(good),
            "geomean_speedup": geomean(good["speedup"]),
            "flops_exec/useful": geomean(_ratio(good, "flops_exec", "flops_useful")) if modeled else np.nan,
            "bytes_exec/min": geomean(_ratio(good, "bytes_exec", "bytes_min")) if modeled else np.nan,
        })
    columns = KEYS + ["rows", "errors", "geomean_speedup", "flops_exec/useful", "bytes_exec/min"]
    table = pd.DataFrame.from_records(records, columns=columns)
    # an op's rows together, in the CSV's order of ops; then mode, dtype, device, provider (eager first)
    first = {op: i for i, op in enumerate(dict.fromkeys(df["op"]))}
    order = {"op": lambda s: s.map(first), "mode": lambda s: s.map(lambda m: MODE_ORDER.get(m, len(MODE_ORDER))),
             "provider": lambda s: s.map(lambda p: (p != "eager", p != "ours", str(p)))}
    return table.sort_values(KEYS, key=lambda s: order.get(s.name, lambda s: s.astype(str))(s), kind="stable",
                             ignore_index=True)


VERSUS_KEYS = ["op", "mode", "dtype", "device"]


def versus(df: pd.DataFrame, with_eager: bool = False) -> pd.DataFrame:
    """Ours against each other provider but eager (whose column is the speedup already; ``with_eager`` puts it
    first), at the headline size:
    the longest sequence at which both have a successful row, and of its panels the one with the most useful work
    (``flops_useful``, then ``bytes_min``; the CSV's first panel where those are missing).

    ``speedup_vs_peer``: the peer's ms over ours (> 1: ours is faster; on ``model:*`` devices, modeled times);
    ``flops_exec ours/peer`` and ``bytes_exec ours/peer``: the counted work and traffic, ours over the peer's
    (< 1: ours does less); ``bytes_dram ours/peer``: the DRAM traffic the model estimates from them (re-reads an
    H100's L2 serves taken out, docs/performance-model.md), where both rows have it. ``peer_errors``: the peer's
    error rows (e.g. disagreeing with the reference) in the same op, mode, dtype and device, which no speedup is
    given for."""
    bad = failed(df)
    records = []
    for key, group in df.groupby(VERSUS_KEYS, sort=False, dropna=False):
        good = group[~bad.loc[group.index]]
        ours = good[good["provider"] == "ours"]
        others = sorted(dict.fromkeys(group["provider"]), key=lambda p: p != "eager")  # eager first, else as found
        for peer in others:
            if peer == "ours" or (peer == "eager" and not with_eager):
                continue
            theirs = good[good["provider"] == peer]
            record = {**dict(zip(VERSUS_KEYS, key)), "peer": peer,
                      "peer_errors": int((bad.loc[group.index] & (group["provider"] == peer)).sum())}
            both = ours.merge(theirs, on=["params", "seqlen"], suffixes=("_ours", "_peer"))
            if not both.empty:
                size = {c: pd.to_numeric(both[f"{c}_ours"], errors="coerce").fillna(0.0) if f"{c}_ours" in both
                        else pd.Series(0.0, index=both.index) for c in ("flops_useful", "bytes_min")}
                both = both.assign(_flops=size["flops_useful"], _bytes=size["bytes_min"])
                head = both.sort_values(["seqlen", "_flops", "_bytes"], ascending=False, kind="stable").iloc[0]
                ratio = {}
                for col in ("flops_exec", "bytes_exec", "bytes_dram"):
                    a = pd.to_numeric(pd.Series([head.get(f"{col}_ours")]), errors="coerce").iloc[0]
                    b = pd.to_numeric(pd.Series([head.get(f"{col}_peer")]), errors="coerce").iloc[0]
                    ratio[col] = a / b if b and np.isfinite(b) and b > 0 else np.nan
                record.update({
                    "headline": f"seqlen={head['seqlen']} {head['params']}", "ours_ms": head["ms_ours"],
                    "peer_ms": head["ms_peer"], "speedup_vs_peer": head["ms_peer"] / head["ms_ours"],
                    "flops_exec ours/peer": ratio["flops_exec"], "bytes_exec ours/peer": ratio["bytes_exec"],
                    "bytes_dram ours/peer": ratio["bytes_dram"],
                })
            records.append(record)
    columns = VERSUS_KEYS + ["peer", "headline", "ours_ms", "peer_ms", "speedup_vs_peer", "flops_exec ours/peer",
                             "bytes_exec ours/peer", "bytes_dram ours/peer", "peer_errors"]
    return pd.DataFrame.from_records(records, columns=columns)


def render(table: pd.DataFrame, digits: int | None = None) -> str:
    """The table as text: 3 decimals, or ``digits`` significant digits (times of a few microseconds)."""
    fmt = (lambda v: f"{v:.3f}") if digits is None else (lambda v: f"{v:.{digits}g}")
    return table.to_string(index=False, na_rep="", float_format=fmt)
