"""``@triton.jit`` helpers for loading a GEMM operand's tiles with TMA (Hopper's tensor memory accelerator) through
a device-side tensor descriptor, whichever way the operand is laid out.

A GEMM operand ``X: (rows, cols)`` given by a pointer and two strides is either stored as it is read (``cols``
contiguous: ``s_cols == 1``) or *transposed*: it is the transpose of a row-major ``(cols, rows)`` array
(``s_rows == 1``; ``w.T`` passed as ``w`` with swapped strides, or ``dh.T`` in a weight gradient). A TMA
descriptor needs its last dimension contiguous, so for a transposed operand it is built on the array's real
layout and each loaded ``(BLOCK_C, BLOCK_R)`` box is transposed back (``.T``): a relabelling of the shared-memory
tile, which the tensor cores read in either major order (wgmma takes MN-major 16-bit operands), not a copy.

The host side must check what a descriptor requires (``kernels._runtime.tma_ok`` on the stored layout): 16-byte
aligned start and leading stride, the last block dimension at least 16 bytes, every block dimension <= 256.
Boxes past the array's edge are zero-filled on loads and clipped on stores, so no masks are needed.
"""

import triton
import triton.language as tl


@triton.jit
def operand_descriptor(X, rows, cols, s_rows, s_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                       TRANSPOSED: tl.constexpr):
    """A descriptor for ``(BLOCK_R, BLOCK_C)`` tiles of the ``(rows, cols)`` operand ``X`` (see the module)."""
    if TRANSPOSED:
        desc = tl.make_tensor_descriptor(X, shape=[cols, rows], strides=[s_cols, 1], block_shape=[BLOCK_C, BLOCK_R])
    else:
        desc = tl.make_tensor_descriptor(X, shape=[rows, cols], strides=[s_rows, 1], block_shape=[BLOCK_R, BLOCK_C])
    return desc


@triton.jit
def operand_tile(desc, row0, col0, TRANSPOSED: tl.constexpr):
    """The ``(BLOCK_R, BLOCK_C)`` tile of the operand at ``(row0, col0)``, loaded by TMA through ``desc``."""
    if TRANSPOSED:
        tile = desc.load([col0, row0]).T
    else:
        tile = desc.load([row0, col0])
    return tile
