"""What the counters record (``kernels/perf/counters.py``): one :class:`Launch` a kernel launch (a Triton grid or an
aten op), and a :class:`Counter`, the launches of one ``count()`` block and their totals."""

from __future__ import annotations

import dataclasses
from collections import defaultdict


@dataclasses.dataclass
class Launch:
    """One kernel launch: a Triton grid, or one aten op."""

    kernel: str
    programs: int = 1
    programs_run: int = 1  # < programs when the launch was sampled (its counts are then scaled up)
    source: str = "triton"  # or "aten"
    # FLOPs of matrix products by input class ("fp16", "bf16", "fp32-ieee", "fp32-tf32", ...): the classes run at
    # different peaks. Elementwise arithmetic is not counted (it is never what bounds these kernels).
    dot_flops: dict = dataclasses.field(default_factory=lambda: defaultdict(int))
    bytes_read: int = 0
    bytes_written: int = 0
    num_warps: int | None = None  # a Triton launch's warps a program (what bounds how many programs share an SM)
    # Traffic by tensor, for the L2 model (kernels/perf/model.py): the bytes asked of each of the launch's tensors
    # ({(tensor index, "r" or "w"): bytes}) and each tensor's extent (bytes between its first and last element).
    # A tensor asked for more bytes than its extent is re-read; what reaches HBM depends on whether L2 holds it.
    requested: dict = dataclasses.field(default_factory=lambda: defaultdict(int))
    extents: list = dataclasses.field(default_factory=list)
    # The most loads one line of the kernel issued in a program (its loop's trip count; 1 without a loop), over the
    # programs run. A program whose loop has no tl.dot waits for each trip's loads before the next (Triton
    # pipelines the loops that feed tl.dot), which bounds a persistent grid's speed; and the programs resident
    # together walk their loops in step, so what L2 must hold at once is one trip's data of each
    # (kernels/perf/model.py).
    trips: float = 1.0
    # Of those trips, the ones whose loads the program waits for: all but a pipelined loop's (``tl.range(...,
    # num_stages >= 2)``, whose next trip's loads are in flight while one computes; ``kernels/perf/attribution.py``).
    # None: every trip (counts made before pipelined loops were told apart).
    waited_trips: float | None = None

    @property
    def flops(self) -> int:
        return sum(self.dot_flops.values())

    @property
    def bytes_unique(self) -> int:
        """Bytes counted once per element touched: every tensor's requested bytes, capped by its extent (what the
        launch must move at least, however well L2 serves its re-reads). Aten launches count operands once."""
        if not self.extents:
            return self.bytes_read + self.bytes_written
        attributed = sum(self.requested.values())
        rest = self.bytes_read + self.bytes_written - attributed  # pointers into no tensor argument (rare)
        return rest + sum(min(n, self.extents[i]) for (i, _), n in self.requested.items())


@dataclasses.dataclass
class Counter:
    """The launches seen inside one ``count()`` block, and their totals."""

    records: list = dataclasses.field(default_factory=list)
    # what the host does besides launching: (number of records before it, "op" or "sync"), in order. "op": an aten
    # op that launches nothing (a view, an allocation); "sync": one that makes the host wait for the GPU
    # (nonzero, .item(), ...). The model's timeline reads them (kernels/perf/model.py).
    host: list = dataclasses.field(default_factory=list)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.records)

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self.records)

    @property
    def bytes_written(self) -> int:
        return sum(r.bytes_written for r in self.records)

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def launches(self) -> int:
        return len(self.records)

    @property
    def programs(self) -> int:
        return sum(r.programs for r in self.records)

    @property
    def bytes_unique(self) -> int:
        return sum(r.bytes_unique for r in self.records)

    def by_kernel(self) -> dict[str, Counter]:
        """name -> a Counter of that kernel's launches only."""
        out: dict[str, Counter] = {}
        for r in self.records:
            out.setdefault(r.kernel, Counter()).records.append(r)
        return out

    def summary(self) -> str:
        lines = [f"{'kernel':<28}{'launches':>9}{'programs':>10}{'GFLOP':>10}{'MB read':>10}{'MB written':>11}"]
        for name, c in list(self.by_kernel().items()) + [("total", self)]:
            lines.append(f"{name:<28}{c.launches:>9}{c.programs:>10}{c.flops / 1e9:>10.3f}"
                         f"{c.bytes_read / 1e6:>10.3f}{c.bytes_written / 1e6:>11.3f}")
        return "\n".join(lines)
