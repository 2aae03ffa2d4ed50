"""``triton-playground COMMAND [ARGS]``: one command line, a subcommand per part.

Each subcommand is its module's own ``main(argv)``, imported only when it runs (importing the kernels picks the
backend, and a report re-executes itself in compile-only mode), so ``triton-playground --help`` loads nothing.
``python -m triton_playground.sweeps ...`` and the other modules' ``-m`` forms run the same functions.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module with main(argv), one line of help)
COMMANDS = {
    "sweep": ("triton_playground.sweeps.__main__",
              "time ops and models against their peers on a GPU; count and model them on an H100 without one"),
    "plot": ("triton_playground.plots.__main__", "speedup figures and summary tables from sweep CSVs"),
    "report": ("triton_playground.kernels.report.__main__",
               "what every kernel compiles to for sm_90: registers, spills, occupancy, tensor cores, loads"),
    "validate": ("triton_playground.validation.__main__",
                 "the H100 model against published H100 measurements (Liger-Kernel's): errors, held out"),
    "results": ("triton_playground.results", "every generated result of docs/results/: the sweep, its figures and "
                "tables, the validation"),
    "compare": ("triton_playground.compare", "A/B of two commits (or a commit and the working tree): counted work, "
                "modeled time and the sm_90 report, base vs head; --fail-on-regression PCT gates"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: triton-playground COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "'triton-playground COMMAND --help' describes each."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{usage()}\n\ntriton-playground: error: unknown command {command!r}", file=sys.stderr)
        return 2
    result = importlib.import_module(COMMANDS[command][0]).main(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
