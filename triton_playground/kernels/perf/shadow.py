"""Fake tensors with real values on demand: counting PyTorch code whose shapes depend on its data.

Counting needs shapes only, so PyTorch code is counted on fake tensors (``FakeTensorMode``) and never computed. Code
whose shapes depend on values — the MoE reference's loop over the experts that were hit (``nonzero``, then
``torch.where`` per expert), packed attention's lengths read from its prefix sums (``.item()``) — stops there: a
fake tensor has no values. :class:`RealOnDemand` lets it go on. Beneath the counters and above the fake mode, it
writes down how every fake tensor was made (the op and its arguments); when an op needs values (its output's
shape or a Python number depends on them), it computes for real just the chain of ops that lead to its inputs,
from the real tensors the fake ones stand for, and answers with the real result. So the MoE's routing (a small
GEMM, softmax, top-k, one-hot) is computed, and its experts' GEMMs, the bulk of the work, are only counted.

A chain through an op that writes into a tensor (``index_add_``, ``copy_``) is not replayed: the tensor's value
would depend on when it is read. Such code raises the fake mode's own error, as before.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map

from .counters import _SYNCS

# ops whose output's shape, or whose Python value, depends on their inputs' values: those after which a GPU's host
# waits for the device (the counters' list), and two whose output size fake tensors cannot know without values
DATA_DEPENDENT = _SYNCS | {"bincount", "repeat_interleave"}


class NotReplayable(RuntimeError):
    """A value was needed whose chain of ops cannot be computed again (an in-place write on the way)."""


class RealOnDemand(TorchDispatchMode):
    """Used inside ``fake_mode`` (enter it after the fake mode): ``reals`` maps the fake inputs to the real
    tensors they stand for (``{id(fake): real}``)."""

    def __init__(self, fake_mode, reals: dict):
        super().__init__()
        self.fake_mode = fake_mode
        self.real = dict(reals)  # id(fake tensor) -> its real value, once known
        self.made = {}  # id(fake tensor) -> (func, args, kwargs, output index), how it was made
        self.written = set()  # id(fake tensor) of tensors an op wrote into
        self.keep = []  # the fake tensors named in ``made`` (so their ids stay theirs)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in DATA_DEPENDENT:
            value = self._compute(func, args, kwargs)
            if name == "_local_scalar_dense":
                return value
            with self.fake_mode:
                fake = tree_map(lambda t: self.fake_mode.from_tensor(t) if isinstance(t, torch.Tensor) else t, value)
            self._note(fake, func, args, kwargs)
            for f, r in zip(*(tree_flatten(x)[0] for x in (fake, value))):
                if isinstance(f, torch.Tensor):
                    self.real[id(f)] = r
            return fake
        out = func(*args, **kwargs)
        if func._schema.is_mutable:  # its value now depends on when it is read: never replayed, nor kept
            written = [a for a, arg in zip(args, func._schema.arguments)
                       if isinstance(a, torch.Tensor) and arg.alias_info is not None and arg.alias_info.is_write]
            written += [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
            for t in written:
                self.written.add(id(t))
                self.real.pop(id(t), None)
                self.keep.append(t)
        self._note(out, func, args, kwargs)
        return out

    def _note(self, out, func, args, kwargs):
        for index, t in enumerate(tree_flatten(out)[0]):
            if isinstance(t, torch.Tensor) and id(t) not in self.made:
                self.made[id(t)] = (func, args, kwargs, index)
                self.keep.append(t)

    def _value(self, t):
        """The real value of fake tensor ``t``, computing its chain of ops as needed."""
        if id(t) in self.real:
            return self.real[id(t)]
        if id(t) in self.written or id(t) not in self.made:
            raise NotReplayable(f"a value was needed from a tensor of shape {tuple(t.shape)} that was written in "
                                "place or comes from outside the call: its chain cannot be computed again")
        func, args, kwargs, index = self.made[id(t)]
        value = tree_flatten(self._compute(func, args, kwargs))[0][index]
        self.real[id(t)] = value
        return value

    def _compute(self, func, args, kwargs):
        real_args, real_kwargs = tree_map(lambda a: self._value(a) if isinstance(a, torch.Tensor) else a,
                                          (args, kwargs))
        with _disable_current_modes(), torch.no_grad():
            return func(*real_args, **real_kwargs)
