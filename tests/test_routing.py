"""topk_routing beyond the generated tests: the tie rule, -inf logits, shapes and dtypes, the gradient with and
without normalisation, agreement with HF's softmax+topk router where there are no ties, and the contract for rows
whose softmax is undefined (NaN, +inf, all -inf)."""

import pytest
import torch

from triton_playground.kernels import _runtime as rt
from triton_playground.kernels import topk_routing
from triton_playground.kernels.ops.routing.reference import topk_routing_reference, torch_softmax_topk

DEV = rt.DEVICE


def test_ties_go_to_the_lower_index():
    z = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0, 2.0],  # four-way tie at the top, cut by k=3
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # everything tied
                      [3.0, 1.0, 1.0, 1.0, 1.0, 3.0]], device=DEV)  # ties both inside and across the cut
    w, ids = topk_routing(z, 3)
    assert ids.tolist() == [[1, 2, 4], [0, 1, 2], [0, 5, 1]]
    ref_w, ref_ids = topk_routing_reference(z.double(), 3)
    assert torch.equal(ids, ref_ids.to(ids.device))
    torch.testing.assert_close(w.double(), ref_w.to(w.device), rtol=1e-6, atol=0)


@pytest.mark.parametrize("experts", [8, 60, 64, 128, 256])
@pytest.mark.parametrize("normalize", [False, True])
def test_ids_exact_and_weights_close(experts, normalize):
    g = torch.Generator().manual_seed(experts)
    z = torch.randn(13, experts, generator=g).to(DEV)
    k = min(8, experts)
    w, ids = topk_routing(z, k, normalize=normalize)
    ref_w, ref_ids = topk_routing_reference(z.double(), k, normalize=normalize)
    assert torch.equal(ids, ref_ids.to(ids.device))
    assert ((w.double() - ref_w).norm() / ref_w.norm()).item() < 1e-6
    assert (w[:, :-1] >= w[:, 1:]).all()  # sorted descending
    if normalize:
        torch.testing.assert_close(w.sum(-1), torch.ones(13, device=DEV), rtol=1e-6, atol=1e-6)
    else:
        assert (w.sum(-1) < 1 + 1e-6).all()


def test_matches_hf_router_without_ties():
    z = torch.randn(11, 64, generator=torch.Generator().manual_seed(1)).to(DEV)
    w, ids = topk_routing(z, 8)
    hf_w, hf_ids = torch_softmax_topk(z, 8)
    assert torch.equal(ids, hf_ids)
    torch.testing.assert_close(w, hf_w, rtol=1e-6, atol=1e-7)


def test_minus_inf_logits():
    """Masked experts (-inf) are never preferred to finite ones; past them, -inf ties go to the lower index."""
    z = torch.full((2, 10), float("-inf"), device=DEV)
    z[0, 3], z[1, 7], z[1, 2] = 1.0, 0.0, -5.0
    w, ids = topk_routing(z, 4)
    assert ids.tolist() == [[3, 0, 1, 2], [7, 2, 0, 1]]
    assert w[:, 2:].eq(0).all() and w[0, 0].item() == 1.0


def test_one_token_leading_dims_dtypes():
    z = torch.randn(2, 1, 3, 60, device=DEV, dtype=torch.float16)
    w, ids = topk_routing(z, 5)
    assert w.shape == ids.shape == (2, 1, 3, 5)
    assert w.dtype == torch.float16 and ids.dtype == torch.int64
    _, ref_ids = topk_routing_reference(z.double(), 5)
    assert torch.equal(ids, ref_ids.to(ids.device))
    w1, ids1 = topk_routing(z[:1, :, :1], 60)  # one token, k = E: the full descending order
    assert sorted(ids1.flatten().tolist()) == list(range(60))


def test_peaked_fp16_logits_keep_the_exact_order():
    """Large fp16 logits: many probabilities underflow or crowd, the order is still the exact one."""
    z = (30 * torch.randn(40, 64, generator=torch.Generator().manual_seed(3))).half().to(DEV)
    _, ids = topk_routing(z, 8)
    _, ref_ids = topk_routing_reference(z.double(), 8)
    assert torch.equal(ids, ref_ids.to(ids.device))


@pytest.mark.parametrize("normalize", [False, True])
def test_gradient_matches_autograd_of_the_reference(normalize):
    z = torch.randn(9, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    g = torch.randn(9, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    z32 = z.float().to(DEV).requires_grad_()
    w, _ = topk_routing(z32, 8, normalize=normalize)
    (dz,) = torch.autograd.grad(w, z32, g.float().to(DEV))
    z64 = z.float().double().requires_grad_()
    ref_w, _ = topk_routing_reference(z64, 8, normalize=normalize)
    (ref_dz,) = torch.autograd.grad(ref_w, z64, g)
    assert ((dz.double().cpu() - ref_dz).norm() / ref_dz.norm()).item() < 1e-5
    assert dz.sum(-1).abs().max().item() < 1e-6  # softmax gradients sum to zero over the experts


def test_gradient_with_non_contiguous_cotangent():
    z = torch.randn(6, 16, device=DEV, requires_grad=True)
    w, _ = topk_routing(z, 4)
    g = torch.randn(4, 6, device=DEV).t()  # strided cotangent
    (dz,) = torch.autograd.grad(w, z, g)
    z64 = z.detach().double().requires_grad_()
    (ref_dz,) = torch.autograd.grad(topk_routing_reference(z64, 4)[0], z64, g.double())
    torch.testing.assert_close(dz.double(), ref_dz, rtol=1e-5, atol=1e-7)


def test_no_tokens():
    w, ids = topk_routing(torch.randn(0, 8, device=DEV), 2)
    assert w.shape == ids.shape == (0, 2)


# ------------------------------------------------------------------------------------------------ NaN and inf

NAN, INF = float("nan"), float("inf")


def _rows_with_undefined_softmax(experts, dtype, seed=0):
    """Ordinary rows interleaved with every kind of undefined row; returns the logits and the undefined mask."""
    z = torch.randn(12, experts, generator=torch.Generator().manual_seed(seed))
    z[1] = NAN  # all NaN (the regression: every comparison false, ids fell through to BLOCK_E)
    z[2, 0] = NAN  # a single NaN, first / middle / last expert
    z[4, experts // 2] = NAN
    z[5, experts - 1] = NAN
    z[6, min(3, experts - 1)] = INF  # softmax computes inf - inf: NaN in torch
    z[8] = -INF  # nothing above -inf: -inf - (-inf)
    z[9, 0], z[9, experts - 1] = INF, NAN
    undefined = torch.zeros(12, dtype=torch.bool)
    undefined[[1, 2, 4, 5, 6, 8, 9]] = True
    return z.to(device=DEV, dtype=dtype), undefined.to(DEV)


def _check_ids_valid(ids, experts):
    """Every id in [0, experts), k distinct ones per row."""
    assert ids.dtype == torch.int64
    assert ((ids >= 0) & (ids < experts)).all(), f"ids out of [0, {experts}): {ids[(ids < 0) | (ids >= experts)]}"
    s = ids.sort(dim=-1).values
    assert (s[..., 1:] != s[..., :-1]).all(), "an expert picked twice in a row"


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the interpreter's np.nanmax on a NaN row
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("experts,k", [(64, 8), (13, 13), (8, 3)])
def test_undefined_rows_get_nan_weights_and_the_first_k_experts(experts, k, normalize, dtype):
    z, undefined = _rows_with_undefined_softmax(experts, dtype)
    w, ids = topk_routing(z, k, normalize=normalize)
    _check_ids_valid(ids, experts)
    assert torch.equal(ids[undefined], torch.arange(k, device=DEV).expand(int(undefined.sum()), k))
    assert w[undefined].isnan().all()
    # the other rows: finite, and bit for bit what they give without the undefined rows in the batch
    assert torch.isfinite(w[~undefined]).all()
    w_ok, ids_ok = topk_routing(z[~undefined], k, normalize=normalize)
    assert torch.equal(w[~undefined], w_ok) and torch.equal(ids[~undefined], ids_ok)
    # the reference keeps the same contract (the generated tests compare ids exactly)
    ref_w, ref_ids = topk_routing_reference(z.double(), k, normalize=normalize)
    assert torch.equal(ids, ref_ids.to(ids.device))
    assert torch.equal(ref_w.isnan(), undefined[:, None].expand(-1, k).cpu())
    torch.testing.assert_close(w[~undefined].double(), ref_w[~undefined.cpu()].to(DEV),
                               rtol=1e-6 if dtype == torch.float32 else 1e-3, atol=0)


def test_a_single_nan_anywhere():
    """One NaN at each position of a row, ordinary rows in between: NaN weights and ids 0..k-1 wherever it is."""
    experts, k = 16, 4
    z = torch.randn(2 * experts, experts, generator=torch.Generator().manual_seed(2))
    z[torch.arange(0, 2 * experts, 2), torch.arange(experts)] = NAN
    w, ids = topk_routing(z.to(DEV), k)
    _check_ids_valid(ids, experts)
    assert torch.equal(ids[::2], torch.arange(k, device=DEV).expand(experts, k))
    assert w[::2].isnan().all() and torch.isfinite(w[1::2]).all()
    _, ref_ids = topk_routing_reference(z.double(), k)
    assert torch.equal(ids, ref_ids.to(ids.device))


def test_one_expert_nan():
    w, ids = topk_routing(torch.tensor([[NAN], [INF], [-INF], [2.0]], device=DEV), 1)
    assert ids.flatten().tolist() == [0, 0, 0, 0]
    assert w[:3].isnan().all() and w[3].item() == 1.0


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
@pytest.mark.parametrize("normalize", [False, True])
def test_gradient_of_undefined_rows_is_nan(normalize):
    """NaN in, NaN out for the undefined rows; the others get exactly the gradient they get on their own."""
    z, undefined = _rows_with_undefined_softmax(16, torch.float32, seed=4)
    g = torch.randn(12, 4, generator=torch.Generator().manual_seed(5)).to(DEV)
    z = z.requires_grad_()
    (dz,) = torch.autograd.grad(topk_routing(z, 4, normalize=normalize)[0], z, g)
    assert dz[undefined].isnan().all() and torch.isfinite(dz[~undefined]).all()
    z_ok = z.detach()[~undefined].requires_grad_()
    (dz_ok,) = torch.autograd.grad(topk_routing(z_ok, 4, normalize=normalize)[0], z_ok, g[~undefined])
    assert torch.equal(dz[~undefined], dz_ok)
    z64 = z.detach().double().requires_grad_()
    (ref_dz,) = torch.autograd.grad(topk_routing_reference(z64, 4, normalize=normalize)[0], z64, g.double())
    assert ref_dz[undefined.cpu()].isnan().all(), "the reference's gradient follows the same contract"
