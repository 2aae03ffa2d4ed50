#!/usr/bin/env bash
# The one GPU run: versions and device, the roofline ceilings, the test suite in its `gpu` hypothesis profile
# (compiled kernels, bf16 included, bigger shapes), the static sm_90 report, then the sweeps of every op and model with their plots.
# Everything lands in $OUT (default out/gpu), at most 8 files, flat (what the device tool brings back).
#
#   scripts/gpu_run.sh [all|check|report|sweep] [OP ...]     (default: all, every op)
#
# Runs on the GPU image as it is (python3 with torch, triton, pandas, matplotlib, hypothesis, transformers):
# nothing is installed. The sweep CSV resumes: copy an earlier $OUT/sweep.csv to triton_playground/sweeps/results/partial.csv
# and the next run continues from it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stage=${1:-all}; shift || true
ops=${*:-all}

python3 - <<'PY' | tee "$OUT/env.txt"
import platform, torch, triton, numpy
print("python", platform.python_version(), "torch", torch.__version__, "triton", triton.__version__, "numpy", numpy.__version__)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
PY

if [ "$stage" = all ] || [ "$stage" = check ]; then
  HYPOTHESIS_PROFILE=gpu python3 -m pytest -q -x -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest.log"
fi
if [ "$stage" = all ] || [ "$stage" = report ]; then
  # the static sm_90 report, its registers and local memory read from the loaded kernels (n_regs, n_spills)
  python3 -m triton_playground report $ops --out "$OUT/report.csv" > "$OUT/report.txt" 2>&1
fi
if [ "$stage" = all ] || [ "$stage" = sweep ]; then
  [ -f triton_playground/sweeps/results/partial.csv ] && cp triton_playground/sweeps/results/partial.csv "$OUT/sweep.csv"
  python3 -m triton_playground sweep $ops --full --out "$OUT/sweep.csv" 2>&1 | tee "$OUT/sweep.log"
  mkdir -p "$OUT/plots" && python3 -m triton_playground plot "$OUT/sweep.csv" --out "$OUT/plots/"  # one PNG per op: a folder of their own
fi
ls -la "$OUT"
