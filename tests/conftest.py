"""Test set-up: the backend (kernels picks the interpreter when there is no GPU), NaN-poisoned outputs, and
the hypothesis profiles.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` — derandomized, few examples, the default without a GPU, so a red run
reproduces; ``dev`` — random, more examples, for exploring on a laptop; ``gpu`` — the default with a GPU: many
examples, big shapes, bf16.
"""

import os

import torch
from hypothesis import HealthCheck, settings

from triton_playground import kernels  # noqa: F401  (sets TRITON_INTERPRET before anything imports triton)
from triton_playground.kernels import _runtime

_runtime.set_poison(True)
_runtime.set_overflow_checks(False)  # the suite's shapes are tiny: no int32 index nears 2**31 (see there)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
settings.register_profile("ci", derandomize=True, max_examples=20, database=None, **_common)
settings.register_profile("dev", max_examples=30, **_common)
settings.register_profile("gpu", max_examples=60, **_common)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "gpu" if _runtime.GPU else "ci")
settings.load_profile(PROFILE)
