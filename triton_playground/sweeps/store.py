"""The sweep's CSV: its columns, what a rerun finds there (resume), writing rows to it, and the shards of a run
spread over processes (``torchrun``; see :mod:`sweeps.distributed`).

Rows are appended as they finish, each in one ``write`` (a process killed mid-run leaves whole rows; a torn last
line, should one ever be left, is ignored and cut off). A rerun with the same CSV skips the rows that finished
(resume). A row with an ``error`` (a case that failed or ran out of memory) is run again, and its new row replaces
the error row.

Shards: under ``torchrun`` each rank appends to its own file next to the CSV, ``X.rank<r>.csv`` for ``X.csv``,
and at the end rank 0 merges them into ``X.csv`` (:func:`merge`) and removes them. What a run finds of an earlier
one is the CSV *and* any shards left there (a run that died before merging), whatever its world size, so a rerun
with any number of processes, or none, skips every row any earlier run finished.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pandas as pd

COLUMNS = [
    "op", "provider", "mode", "dtype", "seqlen", "params", "ms", "ms_p20", "ms_p80", "tflops", "gbps",
    "pct_roofline", "speedup", "peak_mb", "device", "rank", "world_size", "torch", "triton", "commit", "timestamp",
    "config", "error", "copy_gbps", "matmul_tflops",
    # counted work (kernels.count(); model rows, see sweeps/modeled.py): executed and least FLOPs and bytes
    "flops_exec", "flops_useful", "bytes_exec", "bytes_min", "launches", "programs", "counted",
    "bytes_dram",  # what of bytes_exec the model sends to HBM (L2 serves the rest; kernels/perf/model.py)
]
# device is part of a row's identity: a modeled row and a GPU row of the same case are two measurements. rank and
# world_size (which process of how many measured it) are not: a rerun with another world size resumes the rows.
KEY = ["op", "provider", "mode", "dtype", "seqlen", "params", "device"]
# the merged CSV's order (seqlen as a number)
ORDER = ["op", "params", "dtype", "mode", "seqlen", "provider", "device"]


def default_out(name: str, device: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in device).strip("-").lower()
    return Path(os.environ.get("SWEEP_OUT", "out")) / f"{name}-{slug}.csv"


def shard_path(out: Path, rank: int) -> Path:
    """Where rank ``rank`` of a distributed run writes its rows: ``X.rank<rank>.csv`` beside ``X.csv``."""
    return out.with_name(f"{out.stem}.rank{rank}{out.suffix}")


def shard_files(out: Path) -> list[Path]:
    """The shards beside ``out`` (of this run or of earlier ones that did not merge), by rank."""
    pattern = re.compile(rf"{re.escape(out.stem)}\.rank(\d+){re.escape(out.suffix)}")
    found = [(int(m.group(1)), p) for p in (out.parent.glob(f"{out.stem}.rank*{out.suffix}")
                                             if out.parent.is_dir() else ())
             if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def key_of(row) -> tuple:
    """A row's KEY values, alike whether read from the CSV or made by the sweep (seqlen an int)."""
    return tuple(int(row[k]) if k == "seqlen" else row[k] for k in KEY)


def _case_of(row) -> tuple:
    """The key less the provider: the case whose eager time a speedup divides."""
    return tuple(v for k, v in zip(KEY, key_of(row)) if k != "provider")


def read_rows(path: Path, as_text: bool = False) -> pd.DataFrame:
    """The whole rows of a sweep CSV (a torn last line is left out); ``as_text``: every cell as written."""
    data = path.read_bytes() if path.exists() else b""
    data = data[:data.rfind(b"\n") + 1]
    if not data.strip():
        return pd.DataFrame(columns=COLUMNS)
    if as_text:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    return pd.read_csv(io.BytesIO(data), dtype={"params": str})


class Store:
    """One sweep CSV, read once for resuming, then written a row at a time.

    ``done``: the keys of rows that finished (skipped). ``failed``: the keys of rows with an error and none
    finished (run again; the retry's row replaces the error row). ``resumed``: whether there was a CSV to read.

    ``write_to``: the file rows go to, when not ``path`` (a rank's shard). ``state``: what :meth:`state` answered
    in another process (rank 0 reads for every rank, whose shards need not be on a shared disk); without it the
    CSV and the shards beside it are read here.
    """

    def __init__(self, path: Path, *, write_to: Path | None = None, state: dict | None = None):
        self.path = path
        self.file = write_to or path
        self.file.parent.mkdir(parents=True, exist_ok=True)
        _repair(self.file)
        if state is None:
            state = self._read()
        self.done, self.failed, self.resumed = set(state["done"]), set(state["failed"]), state["resumed"]
        self._eager_ms: dict = dict(state["eager_ms"])
        # the error rows in the file written here: replaced in place by their retry (others are merged away)
        here = read_rows(self.file)
        self._failed_here = {key_of(r) for r in here.to_dict("records") if _is_error(r)} & self.failed

    def _read(self) -> dict:
        done, failed, eager_ms = set(), set(), {}
        files = [self.path, *shard_files(self.path)]
        if self.file not in files:
            files.append(self.file)
        resumed = False
        for f in files:
            rows = read_rows(f)
            resumed |= len(rows) > 0
            for row in rows.to_dict("records"):
                (failed if _is_error(row) else done).add(key_of(row))
                if row["provider"] == "eager" and pd.notna(row.get("ms")):
                    eager_ms[_case_of(row)] = row["ms"]
        return {"done": done, "failed": failed - done, "eager_ms": eager_ms, "resumed": resumed}

    def state(self) -> dict:
        """What was read (for the other ranks of a distributed run)."""
        return {"done": self.done, "failed": self.failed, "eager_ms": self._eager_ms, "resumed": self.resumed}

    def finished(self, columns: dict) -> bool:
        """Whether the CSV (or a shard) holds a finished row of these key columns."""
        return key_of(columns) in self.done

    def eager_ms(self, columns: dict) -> float | None:
        """eager's time on the case of these key columns, from this run or the CSV's earlier rows."""
        return self._eager_ms.get(_case_of(columns))

    def add(self, row: dict) -> None:
        """Write one row: appended, or in place of the error row of its key."""
        key = key_of(row)
        append_row(self.file, row, replaces_error_row=key in self._failed_here)
        self.failed.discard(key)
        self._failed_here.discard(key)
        if row["provider"] == "eager" and pd.notna(row.get("ms")):
            self._eager_ms[_case_of(row)] = row["ms"]


def _is_error(row) -> bool:
    error = row["error"]
    return isinstance(error, str) and bool(error)


def _repair(path: Path) -> None:
    """Make ``path`` ready to append to: a torn last line cut off, and the header brought to :data:`COLUMNS` (a
    CSV of an older version, without some columns, gets them, empty; its rows are kept as written)."""
    if not path.exists():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    header = data[:data.find(b"\n")].decode() if end else ""
    if end and header.split(",") != COLUMNS:
        _write_atomically(path, read_rows(path, as_text=True))


def _write_atomically(path: Path, df: pd.DataFrame) -> None:
    """``df`` (text cells) as the CSV ``path``, its columns brought to COLUMNS (others kept after them), replacing
    the file in one rename."""
    columns = COLUMNS + [c for c in df.columns if c not in COLUMNS]
    tmp = path.with_name(path.name + ".tmp")
    df.reindex(columns=columns, fill_value="").to_csv(tmp, index=False)
    os.replace(tmp, path)


def append_row(out: Path, row: dict, replaces_error_row: bool) -> None:
    """Append one row; when it retries a failed case, the failed case's row goes, so each key stays unique.

    An append is one ``write`` of the whole line (header too, for a new file), so a process killed at any moment
    leaves whole rows. A retry is written before the error row is dropped, and the file is replaced in one rename:
    an interrupted run leaves either the old error row or the new row, never neither.
    """
    new = pd.DataFrame([row], columns=COLUMNS)
    if not replaces_error_row:
        text = new.to_csv(None, header=not out.exists() or not out.stat().st_size, index=False)
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        return
    # As text, so that the rows kept are written back exactly as they were read.
    old = read_rows(out, as_text=True)
    key = [str(row[k]) for k in KEY]
    kept = old[~(old[KEY] == key).all(axis=1)]
    tmp = out.with_name(out.name + ".tmp")
    kept.to_csv(tmp, index=False)
    new.to_csv(tmp, mode="a", header=False, index=False)
    os.replace(tmp, out)


def merge(out: Path, texts=()) -> int:
    """Merge the shards beside ``out`` (and ``texts``: shard contents sent by ranks whose disk this is not) into
    ``out``, then remove those shards; answers the rows ``out`` then holds.

    One row per key: a finished row before an error row, else the latest (by timestamp, then the later file), so a
    retry anywhere replaces its error row; sorted by op, params, dtype, mode, seqlen, provider and device. Cells
    are kept as written. ``out`` is replaced in one rename before any shard is removed: a crash in between leaves
    rows twice, which the next merge makes once again.
    """
    shards = shard_files(out)
    frames = [read_rows(p, as_text=True) for p in [out, *shards]]
    frames += [pd.read_csv(io.StringIO(t[:t.rfind("\n") + 1]), dtype=str, keep_default_na=False)
               for t in texts if t and t.strip()]
    frames = [f for f in frames if len(f)]
    if frames:
        df = pd.concat(frames, ignore_index=True).fillna("")
        df["_finished"], df["_seq"] = df["error"] == "", range(len(df))
        df = df.sort_values(["_finished", "timestamp", "_seq"]).drop_duplicates(KEY, keep="last")
        df["_seqlen"] = df["seqlen"].astype(int)
        df = df.sort_values([("_seqlen" if k == "seqlen" else k) for k in ORDER], kind="stable")
        _write_atomically(out, df.drop(columns=["_finished", "_seq", "_seqlen"]))
    for p in shards:
        p.unlink(missing_ok=True)
    return len(df) if frames else 0
