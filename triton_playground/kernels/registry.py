"""Every op of the playground, by name. Tests and sweeps are generated from this list.

Each entry is a folder ``kernels/ops/<entry>/`` whose ``spec.py`` exports ``SPECS``, a tuple of
:class:`kernels.spec.OpSpec` (see ``kernels/ops/__init__.py`` for the folder's layout). Adding an op is its
folder plus one line here.
"""

import importlib

OP_PACKAGES = [
    "layer_norm",  # layer_norm, rms_norm
    "attention",  # attention
    "rope",  # partial_rope
    "mlp",  # mlp
    "routing",  # topk_routing
    "moe",  # moe
]


OPS = {spec.name: spec for package in OP_PACKAGES
       for spec in importlib.import_module(f"{__package__}.ops.{package}.spec").SPECS}
