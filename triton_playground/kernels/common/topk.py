"""``@triton.jit`` softmax + top-k of a tile of rows, shared by ``topk_routing``'s kernels and the fused MoE router
(``kernels/ops/routing/kernel.py``, ``kernels/ops/moe/kernel.py``).

Selecting on the logits. softmax is strictly increasing in the logit, so "the k largest probabilities" is "the
k largest logits" — and the logits are exact (fp16/bf16/fp32 widen to fp32 without rounding), whereas two
distinct logits can round to the same fp32 probability. Selecting on the logits therefore gives exactly the
order a float64 reference gives, and an *exact* tie of logits is an exact tie of probabilities, broken to the
lower index as the contract asks. (HF runs ``torch.topk`` on the fp32 probabilities, whose order among equal
values is unspecified; the two agree wherever the fp32 probabilities differ.)

Undefined rows (the NaN contract: ``kernels/ops/routing/api.py``). The helpers test for them explicitly
(``z != z``, and the row max against +-inf) rather than let the NaN flow through: ``tl.max`` skips NaN (maxnum
semantics, on a GPU and in the interpreter alike), and every comparison of the selection is false against NaN,
so a NaN logit would be passed over and an all-NaN row would select the padding sentinel ``BLOCK_E`` as its
expert.
"""

import triton
import triton.language as tl


@triton.jit
def softmax_topk(z, col_ok, k, NORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    """Softmax over each row of ``z`` and its ``k`` largest entries.

    z: (BLOCK_M, BLOCK_E) fp32 logits; col_ok: (BLOCK_E,) the real experts. Returns the weights
    (BLOCK_M, BLOCK_K) fp32 and the expert ids (BLOCK_M, BLOCK_K) int32, columns >= k zero.

    Selection without a "taken" mask: the picks come out in the strict order (logit descending, index
    ascending), so round ``j`` looks only at entries *after* the previous pick ``(lv, li)`` in that order —
    strictly smaller, or equal with a larger index — and takes the largest of them, the lowest index among
    equals. Two reductions per round; -inf logits are ordinary values here, so every row gets k distinct ids.

    A row whose softmax is undefined (NaN, +inf, or nothing above -inf: see the module doc) selects on zeros
    instead, so its ids are 0..k-1, and gets NaN weights; the other rows are untouched.
    """
    cols = tl.arange(0, BLOCK_E)
    slots = tl.arange(0, BLOCK_K)
    z = tl.where(col_ok[None, :], z, float("-inf"))
    row_max, undefined = softmax_max(z)
    # Every comparison with NaN is false: left in, a NaN row would find nothing "after" the previous pick and
    # select the sentinel BLOCK_E. Zeros tie everywhere, so the selection below yields 0..k-1 with no NaN or
    # inf arithmetic on the way; the NaN goes back into the weights at the end.
    z = tl.where(undefined[:, None] & col_ok[None, :], 0.0, z)
    row_max = tl.where(undefined, 0.0, row_max)
    denom = tl.sum(tl.exp(z - row_max[:, None]), axis=1)  # masked columns: exp(-inf) = 0

    top_w = tl.zeros([z.shape[0], BLOCK_K], dtype=tl.float32)
    top_i = tl.zeros([z.shape[0], BLOCK_K], dtype=tl.int32)
    lv = tl.full([z.shape[0]], float("inf"), tl.float32)  # previous pick: value and index
    li = tl.full([z.shape[0]], -1, tl.int32)
    for j in range(0, k):
        after = (z < lv[:, None]) | ((z == lv[:, None]) & (cols[None, :] > li[:, None]))
        after = after & col_ok[None, :]
        v = tl.max(tl.where(after, z, float("-inf")), axis=1)
        i = tl.min(tl.where(after & (z == v[:, None]), cols[None, :], BLOCK_E), axis=1)
        p = tl.exp(v - row_max) / denom
        top_w = tl.where(slots[None, :] == j, p[:, None], top_w)
        top_i = tl.where(slots[None, :] == j, i[:, None], top_i)
        lv, li = v, i
    if NORMALIZE:
        top_w = top_w / tl.sum(top_w, axis=1)[:, None]
    top_w = tl.where(undefined[:, None] & (slots[None, :] < k), float("nan"), top_w)
    return top_w, top_i


@triton.jit
def softmax_max(z):
    """Row max of ``z`` (masked columns already -inf) and which rows have an undefined softmax.

    The NaN test is its own reduction because ``tl.max`` skips NaN (maxnum); a NaN-free row's max is +inf or
    -inf exactly when its softmax would compute inf - inf.
    """
    row_max = tl.max(z, axis=1)
    has_nan = tl.max((z != z).to(tl.int32), axis=1) > 0
    return row_max, has_nan | (row_max == float("inf")) | (row_max == float("-inf"))
