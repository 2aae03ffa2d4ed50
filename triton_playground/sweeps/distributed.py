"""A sweep spread over processes and machines: ``torchrun --nproc-per-node N -m triton_playground.sweeps OP ... --out X.csv``.

torchrun (``python -m torch.distributed.run``) starts the processes and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``...; :func:`init` joins them with ``torch.distributed`` (NCCL on GPUs, gloo on the CPU) when the
command was started by torchrun or ``WORLD_SIZE`` > 1, and otherwise leaves a plain ``triton-playground sweep`` alone.
What the ranks then do (:func:`sweeps.runner.run`):

1. **Shares.** Rank 0 reads what earlier runs left (``X.csv`` and any shards beside it: :class:`sweeps.store.Store`)
   and deals out the cases still to do: a case (one op's dims at one dtype, every mode and provider of it, the eager
   baseline included) goes whole to one rank, so its speedups divide times of one device; the cases go costliest
   first, each to the rank with the least expected work so far (longest processing time first, on
   :func:`sweeps.plan.expected_cost`: attention at 16k tokens weighs far more than at 512). It broadcasts what it
   read and the shares, so every rank works from the same view and no shard need be on a shared disk.
2. **Work.** Each rank measures its share on its own device (``cuda:LOCAL_RANK``; without a GPU, under the Triton
   interpreter: counted and modeled rows) and appends each row, as it finishes, to its shard ``X.rank<r>.csv``.
   Rows carry ``rank`` and ``world_size`` and the ``device`` of that rank.
3. **Merge.** The ranks meet at the end: each sends its shard's text to rank 0 (a gather: it reaches rank 0 from
   another machine's disk too), rank 0 merges everything into ``X.csv`` (one row per key, sorted;
   :func:`sweeps.store.merge`) and removes the shards, and after a barrier each rank removes its own.

A rank that dies takes the job down (torchrun's agent stops the others), but every row written so far is in a shard
on disk: a rerun, with any number of processes, counts them finished and does the rest.

Coordination (a few pickled objects, the shards' text) goes over gloo even on GPUs, where the NCCL group stays
unused: gloo needs no CUDA memory and waits the hours a rank may wait for the slowest one at the final barrier.

Test hook: ``SWEEPS_KILL_AFTER_ROWS=R:N`` makes rank ``R`` kill itself (SIGKILL: no clean-up at all) right after its
``N``-th row is written, as a crashed node would (tests/test_sweeps_distributed.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import heapq
import os
import signal

import torch

from triton_playground.kernels import _runtime as rt

# The slowest rank may finish hours after the fastest, which waits for it at the final barrier.
TIMEOUT = datetime.timedelta(hours=48)
KILL_HOOK = "SWEEPS_KILL_AFTER_ROWS"


@dataclasses.dataclass
class Ranks:
    """Which process of how many this is; ``group``: the gloo group the ranks coordinate over (None: one process,
    not started by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    group: object = None

    @property
    def distributed(self) -> bool:
        return self.group is not None

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def tag(self) -> str:
        """What a rank's own lines start with."""
        return f"[rank {self.rank}/{self.world_size}] " if self.distributed else ""

    def cpus(self) -> int:
        """The CPU cores this rank may use (its node's, shared by the node's ranks): for counting workers."""
        return max(1, (os.cpu_count() or 1) // self.local_world_size)

    def broadcast(self, obj):
        """Rank 0's ``obj``, on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj) -> list | None:
        """Every rank's ``obj``, by rank, on rank 0 (None elsewhere)."""
        import torch.distributed as dist

        out = [None] * self.world_size if self.lead else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self.group)


def launched() -> bool:
    """Whether this process is one of several (started by torchrun, or WORLD_SIZE > 1 set by another launcher)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> Ranks:
    """Join the other ranks (when :func:`launched`); on a GPU, this rank's device becomes ``cuda:LOCAL_RANK``."""
    if not launched():
        return Ranks()
    import torch.distributed as dist

    env = os.environ
    rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", rank))
    local_world_size = int(env.get("LOCAL_WORLD_SIZE", world_size))
    gpu = rt.DEVICE.type == "cuda"
    if gpu:
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"rank {rank}: LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} "
                             "GPUs; start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if gpu else "gloo", timeout=TIMEOUT)
    group = dist.new_group(backend="gloo", timeout=TIMEOUT) if gpu else dist.group.WORLD
    return Ranks(rank, world_size, local_rank, local_world_size, group)


def close(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()


def assign(costs: list[float], world_size: int) -> list[list[int]]:
    """Shares of the work: for each rank, the indices of ``costs`` it takes, in index order.

    Longest processing time first: the costliest item goes to the rank with the least load so far (ties: the lower
    index, the lower rank), which is within 4/3 of the best balance. Deterministic: the same costs give the same
    shares on every machine. Items of cost 0 (nothing left to do) go to nobody.
    """
    loads = [(0.0, r) for r in range(world_size)]
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        if costs[i] <= 0:
            continue
        load, r = heapq.heappop(loads)
        shares[r].append(i)
        heapq.heappush(loads, (load + costs[i], r))
    return [sorted(share) for share in shares]


def kill_hook(ranks: Ranks, rows_written: int) -> None:
    """The test hook of the module doc: die like a crashed node after ``N`` rows, when this is rank ``R``."""
    spec = os.environ.get(KILL_HOOK)
    if spec:
        rank, rows = map(int, spec.split(":"))
        if ranks.rank == rank and rows_written >= rows:
            os.kill(os.getpid(), signal.SIGKILL)
