"""The sweep's CSV: its columns, what a rerun finds there (resume), and writing rows to it.

Rows are appended as they finish; a rerun with the same CSV skips the rows that finished (resume). A row with an
``error`` (a case that failed or ran out of memory) is run again, and its new row replaces the error row.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

COLUMNS = [
    "op", "provider", "mode", "dtype", "seqlen", "params", "ms", "ms_p20", "ms_p80", "tflops", "gbps",
    "pct_roofline", "speedup", "peak_mb", "device", "torch", "triton", "commit", "timestamp", "config", "error",
    "copy_gbps", "matmul_tflops",
    # counted work (kernels.count(); model rows, see sweeps/modeled.py): executed and least FLOPs and bytes
    "flops_exec", "flops_useful", "bytes_exec", "bytes_min", "launches", "programs", "counted",
]
# device is part of a row's identity: a modeled row and a GPU row of the same case are two measurements
KEY = ["op", "provider", "mode", "dtype", "seqlen", "params", "device"]


def default_out(name: str, device: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in device).strip("-").lower()
    return Path(os.environ.get("SWEEP_OUT", "out")) / f"{name}-{slug}.csv"


def key_of(row) -> tuple:
    """A row's KEY values, alike whether read from the CSV or made by the sweep (seqlen an int)."""
    return tuple(int(row[k]) if k == "seqlen" else row[k] for k in KEY)


def _case_of(row) -> tuple:
    """The key less the provider: the case whose eager time a speedup divides."""
    return tuple(v for k, v in zip(KEY, key_of(row)) if k != "provider")


class Store:
    """One sweep CSV, read once for resuming, then written a row at a time.

    ``done``: the keys of rows that finished (skipped). ``failed``: the keys of rows with an error (run again; the
    retry's row replaces the error row). ``resumed``: whether there was a CSV to read.
    """

    def __init__(self, path: Path):
        self.path = path
        self.done: set = set()
        self.failed: set = set()
        self._eager_ms: dict = {}
        self.resumed = path.exists() and path.stat().st_size > 0
        if self.resumed:
            for row in pd.read_csv(path, dtype={"params": str}).to_dict("records"):
                error = row["error"]
                (self.failed if isinstance(error, str) and error else self.done).add(key_of(row))
                self._note_eager(row)
        path.parent.mkdir(parents=True, exist_ok=True)

    def finished(self, columns: dict) -> bool:
        """Whether the CSV holds a finished row of these key columns."""
        return key_of(columns) in self.done

    def eager_ms(self, columns: dict) -> float | None:
        """eager's time on the case of these key columns, from this run or the CSV's earlier rows."""
        return self._eager_ms.get(_case_of(columns))

    def add(self, row: dict) -> None:
        """Write one row: appended, or in place of the error row of its key."""
        key = key_of(row)
        append_row(self.path, row, replaces_error_row=key in self.failed)
        self.failed.discard(key)
        self._note_eager(row)

    def _note_eager(self, row) -> None:
        if row["provider"] == "eager" and pd.notna(row.get("ms")):
            self._eager_ms[_case_of(row)] = row["ms"]


def append_row(out: Path, row: dict, replaces_error_row: bool) -> None:
    """Append one row; when it retries a failed case, the failed case's row goes, so each key stays unique.

    The retry is written before the error row is dropped, and the file is replaced in one rename: an interrupted
    run leaves either the old error row or the new row, never neither.
    """
    new = pd.DataFrame([row], columns=COLUMNS)
    if not replaces_error_row:
        new.to_csv(out, mode="a", header=not out.exists() or not out.stat().st_size, index=False)
        return
    # As text, so that the rows kept are written back exactly as they were read.
    old = pd.read_csv(out, dtype=str, keep_default_na=False)
    key = [str(row[k]) for k in KEY]
    kept = old[~(old[KEY] == key).all(axis=1)]
    tmp = out.with_name(out.name + ".tmp")
    kept.to_csv(tmp, index=False)
    new.to_csv(tmp, mode="a", header=False, index=False)
    os.replace(tmp, out)
