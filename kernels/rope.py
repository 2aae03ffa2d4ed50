"""Placeholder: this op is being written (see the issue tracker). Its owner replaces this whole file."""

SPECS = ()


def partial_rope(x, positions, *, rotary_dim=None, theta=10000.0):
    raise NotImplementedError("partial_rope is not written yet")


def partial_rope_qk(q, k, positions, *, rotary_dim=None, theta=10000.0):
    raise NotImplementedError("partial_rope_qk is not written yet")
