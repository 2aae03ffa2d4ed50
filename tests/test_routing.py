"""topk_routing beyond the generated tests: the tie rule, -inf logits, shapes and dtypes, the gradient with and
without normalisation, agreement with HF's softmax+topk router where there are no ties."""

import pytest
import torch

from kernels import _runtime as rt
from kernels import topk_routing
from kernels.routing import topk_routing_reference, torch_softmax_topk

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
