"""python -m sweeps OP [OP ...] | all  [--out CSV] [--dtypes bf16,fp16] [--modes fwd,bwd] [--providers ours,eager]"""

import argparse
from pathlib import Path

from sweeps.runner import DTYPES, all_specs, default_out, run


def main(argv=None):
    specs = all_specs()
    parser = argparse.ArgumentParser(prog="python -m sweeps", description="Time ops against their peers.")
    parser.add_argument("ops", nargs="+", help=f"'all' or any of: {', '.join(specs)}")
    parser.add_argument("--out", type=Path, help="CSV to append to (and resume from); default out/<op>-<backend>.csv")
    parser.add_argument("--dtypes", help="comma-separated, of fp32, fp16, bf16 (default: the op's; fp32 on CPU)")
    parser.add_argument("--modes", help="comma-separated, of fwd, bwd, fwd+bwd (default: all the op has)")
    parser.add_argument("--providers", help="comma-separated provider names (default: all; eager always runs)")
    parser.add_argument("--max-seqlen", type=int, help="skip cases with a longer sequence")
    args = parser.parse_args(argv)

    names = list(specs) if args.ops == ["all"] else args.ops
    unknown = [n for n in names if n not in specs]
    if unknown:
        parser.error(f"unknown op(s) {', '.join(unknown)}; choose from: all, {', '.join(specs)}")
    dtypes = None
    if args.dtypes:
        bad = [d for d in args.dtypes.split(",") if d not in DTYPES]
        if bad:
            parser.error(f"--dtypes: unknown {bad}; choose from {list(DTYPES)}")
        dtypes = [DTYPES[d] for d in args.dtypes.split(",")]
    out = args.out or default_out("all" if args.ops == ["all"] else "-".join(names))
    run([specs[n] for n in names], out, dtypes=dtypes, modes=args.modes.split(",") if args.modes else None,
        wanted_providers=args.providers.split(",") if args.providers else None, max_seqlen=args.max_seqlen)


if __name__ == "__main__":
    main()
