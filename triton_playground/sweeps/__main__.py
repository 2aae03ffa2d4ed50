"""triton-playground sweep OP [OP ...] | all  [--out CSV] [--dtypes bf16,fp16] [--modes fwd,bwd] [--providers ours,eager]

Under torchrun (``torchrun --nproc-per-node N -m triton_playground.sweeps ...``) the ranks share the cases: sweeps/distributed.py."""

import argparse
import os
from pathlib import Path

# The interpreter runs many small numpy ops in each worker process: BLAS threads would only fight over the cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from triton_playground.kernels import _runtime as rt
from triton_playground.sweeps import distributed
from triton_playground.sweeps.plan import DTYPES, NothingToRun, all_specs, providers
from triton_playground.sweeps.runner import run
from triton_playground.sweeps.modeled import DEFAULT_SAMPLE, Modeled
from triton_playground.sweeps.store import default_out
from triton_playground.sweeps.timing import Timer

SEQLEN_HELP = """\
rows without a GPU:
  each case is counted under the Triton interpreter at its real (GPU) size and modeled on an H100:
  device=model:H100, ms = the H100 model of the counted work (kernels/perf/model.py; its error against published
  H100 measurements: triton-playground validate), not a measurement. bf16 is counted by running fp16 (same bytes, kernels and peak).

sequence lengths (--max-seqlen N):
  on a GPU and in modeled rows, each op's own list, less the cases longer than N.
  with --interpreter-timings the lists are tiny, since the interpreter is slow; an N beyond one extends it, each panel's
  longest seqlen doubled while it is <= N, at the same tiny shapes (e.g. layer_norm 8, 16, 32 -> 8 .. 256 with
  --max-seqlen 256). The GPU shapes are not used there: they would take hours under the interpreter."""


def _epilog(specs: dict) -> str:
    lines = ["providers per op (eager always runs: speedups are over it; without a GPU, compile runs only "
             "when named in --providers):"]
    lines += [f"  {name}: {', '.join(providers(spec, None))}" for name, spec in specs.items()]
    return "\n".join(lines) + "\n\n" + SEQLEN_HELP


def _union(lists) -> list[str]:
    """The names of all lists, each once, in first-seen order."""
    return list(dict.fromkeys(name for names in lists for name in names))


def main(argv=None):
    specs = all_specs()
    parser = argparse.ArgumentParser(prog="triton-playground sweep",
                                     description="Measure ops against their peers: timed on a GPU, counted and "
                                                 "modeled without one.",
                                     epilog=_epilog(specs), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ops", nargs="+", help=f"'all' or any of: {', '.join(specs)}")
    parser.add_argument("--out", type=Path, help="CSV to append to (and resume from); default out/<op>-<backend>.csv")
    parser.add_argument("--dtypes", help="comma-separated, of fp32, fp16, bf16 (default: the op's; fp32 on CPU; "
                                         "bf16 needs a GPU)")
    parser.add_argument("--modes", help="comma-separated, of fwd, bwd, fwd+bwd (default: all the op has)")
    parser.add_argument("--providers", help="comma-separated provider names, listed per op below (default: all; "
                                            "eager always runs)")
    parser.add_argument("--max-seqlen", type=int, help="skip cases with a longer sequence; with "
                                                       "--interpreter-timings, also extend the tiny case lists up "
                                                       "to it (see below)")
    parser.add_argument("--full", action="store_true",
                        help="every case of each op's list (hours without a GPU); default: the quick plan, a few "
                             "sequence lengths of each op's main shapes up to the real sizes (minutes)")
    parser.add_argument("--interpreter-timings", action="store_true",
                        help="without a GPU: time the interpreter at tiny sizes (device=interpreter; not kernel "
                             "performance) instead of counting and modeling an H100 at the real sizes")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                        help=f"modeled rows: programs run per launch, the rest scaled (default {DEFAULT_SAMPLE}; "
                             "0: every program)")
    args = parser.parse_args(argv)
    if args.interpreter_timings and not rt.INTERPRET:
        parser.error("--interpreter-timings: this machine has a GPU; its rows are timed with do_bench")
    if args.sample < 0:
        parser.error(f"--sample must be >= 0, got {args.sample}")
    modeled = rt.INTERPRET and not args.interpreter_timings

    names = list(specs) if args.ops == ["all"] else args.ops
    if args.ops == ["all"] and modeled:
        # Counting a whole model at the real sizes takes minutes a case under the interpreter; the ops it is made
        # of are counted one by one anyway. Name model_* sweeps to count them.
        names = [n for n in names if not n.startswith("model_")]
        print("(modeled 'all' counts the ops; name the model_* sweeps to count whole models too)")
    unknown = [n for n in names if n not in specs]
    if unknown:
        parser.error(f"unknown op(s) {', '.join(unknown)}; choose from: all, {', '.join(specs)}")
    chosen = [specs[n] for n in names]
    dtypes = None
    if args.dtypes:
        bad = [d for d in args.dtypes.split(",") if d not in DTYPES]
        if bad:
            parser.error(f"--dtypes: unknown {bad}; choose from {list(DTYPES)}")
        if "bf16" in args.dtypes.split(",") and args.interpreter_timings:
            # The interpreter's tl.dot reads bfloat16 bits as integers: the results would be garbage, not slow.
            parser.error("--dtypes bf16: bfloat16 cannot run correctly under the Triton interpreter (its tl.dot "
                         "treats bf16 bits as integers); use fp32 or fp16 on the CPU, or run on a GPU")
        dtypes = [DTYPES[d] for d in args.dtypes.split(",")]
    modes = args.modes.split(",") if args.modes else None
    if modes:
        valid = _union(spec.modes for spec in chosen)
        bad = [m for m in modes if m not in valid]
        if bad:
            parser.error(f"--modes: {', '.join(map(repr, bad))} is not a mode of {', '.join(names)}; "
                         f"choose from {', '.join(valid)}")
    wanted = args.providers.split(",") if args.providers else None
    if wanted:
        valid = _union(providers(spec, None) for spec in chosen)
        bad = [p for p in wanted if p not in valid]
        if bad:
            parser.error(f"--providers: {', '.join(map(repr, bad))} is not a provider of {', '.join(names)}; "
                         f"choose from {', '.join(valid)}")
    ranks = distributed.init()  # one process of several (torchrun): join the others, take this rank's GPU
    # a node's ranks share its cores: each gets its part for the counting workers
    measurer = (Modeled(args.sample or None, workers=min(2, ranks.cpus())) if modeled
                else Timer(workers=max(1, min(8, ranks.cpus() // 2))))
    out = args.out or default_out("all" if args.ops == ["all"] else "-".join(names), measurer.device)
    try:
        run(chosen, out, dtypes=dtypes, modes=modes, wanted_providers=wanted, max_seqlen=args.max_seqlen,
            measurer=measurer, ranks=ranks, full=args.full)
    except NothingToRun as e:
        parser.exit(2, f"{parser.prog}: error: {e}; nothing written\n")
    finally:
        distributed.close(ranks)


if __name__ == "__main__":
    main()
