"""The summary table: per op, mode, dtype, device and provider, the geometric-mean speedup over eager.

``rows``: the successful rows the mean is over; ``errors``: the rows with an error (left out of every mean).
For modeled rows (``model:*`` devices) also the geometric means of ``flops_exec / flops_useful`` and
``bytes_exec / bytes_min``: how much more work and traffic the counted run did than the op's least. A ratio that
is not positive (e.g. no FLOPs counted: ``flops_exec`` 0) is left out of its mean; a mean of no rows is blank.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from plots.figures import MODE_ORDER, kind_of

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


def render(table: pd.DataFrame) -> str:
    return table.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.3f}")
