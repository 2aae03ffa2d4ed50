"""Fitting the model's constants that no datasheet gives (``kernels.perf.model.Constants``) to the fit half.

The objective is the mean squared log error of modeled over measured time on the ``fit`` rows only; the
``held-out`` rows never enter it. A coordinate search, each constant in turn over a log-spaced range around its
value, rounds until nothing improves: seven numbers, each a mechanism the same for every kernel, so a plain search
is enough and its result is reproducible. ``triton-playground validate --fit`` writes the result to
``kernels/perf/constants.json``, which the model reads.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from ..kernels.perf import model as gpu
from . import run

# each constant's search range (seconds, or bytes a second): wide, and physical at both ends
RANGES = {
    "host_triton_s": (1e-6, 100e-6),
    "host_aten_s": (1e-6, 50e-6),
    "host_op_s": (0.1e-6, 20e-6),
    "sync_s": (1e-6, 200e-6),
    "kernel_fixed_s": (0.5e-6, 10e-6),
    "warp_bytes_per_s": (0.1e9, 50e9),
    "trip_s": (0.1e-6, 20e-6),
}


def loss(constants: gpu.Constants, cases) -> float:
    """Mean squared log error over ``cases`` [(counter, row, measured_ms)]."""
    errors = [math.log(run.model(counter, row, constants)["modeled_ms"] / measured)
              for counter, row, measured in cases]
    return float(np.mean(np.square(errors)))


def fit(df, counts, start: gpu.Constants = gpu.CONSTANTS, rounds: int = 6, points: int = 25, log=print):
    """The constants that minimise :func:`loss` on ``df``'s fit rows."""
    cases = [(counts[run.row_key(r)], r, r["y_value_50"]) for _, r in df.iterrows()
             if r["half"] == "fit" and not r["excluded"] and run.row_key(r) in counts]
    best, best_loss = start, loss(start, cases)
    for round_ in range(rounds):
        improved = False
        for name, (low, high) in RANGES.items():
            for value in np.geomspace(low, high, points):
                trial = dataclasses.replace(best, **{name: float(value)})
                trial_loss = loss(trial, cases)
                if trial_loss < best_loss - 1e-12:
                    best, best_loss, improved = trial, trial_loss, True
        log(f"round {round_ + 1}: loss {best_loss:.4f} (geomean error x{math.exp(math.sqrt(best_loss)):.3f} rms)")
        if not improved:
            break
    return best, best_loss, len(cases)


def write(constants: gpu.Constants, fitted_on: str, path=gpu.CONSTANTS_FILE) -> None:
    data = {"fitted_by": "triton-playground validate --fit", "fitted_on": fitted_on,
            "constants": {k: float(f"{v:.4g}") for k, v in dataclasses.asdict(constants).items()}}
    path.write_text(json.dumps(data, indent=2) + "\n")
