"""Every op of the playground, by name. Tests and sweeps are generated from this list.

Each module named here is one op file exporting ``SPECS``, a tuple of :class:`kernels.spec.OpSpec`; adding an
op is its own file plus one entry in ``OP_MODULES``.
"""

import importlib

OP_MODULES = [
    "layer_norm",  # layer_norm, rms_norm
    "attention",  # attention
    "rope",  # partial_rope
    "mlp",  # mlp
    "routing",  # topk_routing
    "moe",  # moe
]

OPS = {spec.name: spec for module in OP_MODULES for spec in importlib.import_module(f"kernels.{module}").SPECS}
