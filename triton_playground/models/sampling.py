"""How ``CausalLM.generate`` turns logits into tokens, and reads a batch's attention mask: HF's rules, written once.

    scores = logits.float()                      (batch, vocab), the last position's
    scores = scores / temperature                HF's TemperatureLogitsWarper   (when temperature != 1)
    scores = keep the top_k largest, else -inf   HF's TopKLogitsWarper          (ties with the k-th kept)
    scores = keep the nucleus of mass top_p      HF's TopPLogitsWarper          (at least one token)
    token  = multinomial(softmax(scores), 1, generator)   or, greedy, argmax(logits)

The order is HF's ``generate`` (``_get_logits_processor``: temperature, then top-k, then top-p), so a top-p
nucleus is taken from the tempered, top-k-cut distribution.
"""

from __future__ import annotations

import math

import torch


def warp_logits(scores: torch.Tensor, temperature=1.0, top_k=None, top_p=None) -> torch.Tensor:
    """``scores: (batch, vocab)`` after temperature, top-k and top-p, in that order; removed tokens are -inf."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]))[0][..., -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        ascending, order = torch.sort(scores, descending=False)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p  # the low tail holding at most 1 - top_p
        drop[..., -1:] = False  # the most probable token always stays
        scores = scores.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    return scores


def next_tokens(logits: torch.Tensor, do_sample: bool, temperature=1.0, top_k=None, top_p=None,
                generator=None) -> torch.Tensor:
    """``logits: (batch, vocab)`` -> the next token of each row, ``(batch, 1)`` int64."""
    if not do_sample:
        return logits.argmax(-1, keepdim=True)
    probs = warp_logits(logits.float(), temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def check_sampling(do_sample, temperature, top_k, top_p, generator) -> None:
    """Each sampling argument as ``generate`` takes it, or a TypeError/ValueError naming it."""
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be a bool, got {do_sample!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be None or an int >= 0 (0: no top-k cut), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def left_padding(attention_mask, input_ids: torch.Tensor) -> list[int] | None:
    """The count of pad tokens starting each row of a left-padded batch, from ``attention_mask: (batch, seq)``
    (1 = token, 0 = pad; bool or integer); None when the mask is None or pads nothing."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor (batch, seq) of 0/1, got "
                        f"{type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got "
                         f"{tuple(attention_mask.shape)}")
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        raise TypeError(f"attention_mask must hold 0/1 integers or bools, got {attention_mask.dtype}")
    mask = attention_mask.to(input_ids.device)
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError("attention_mask must hold only 0 (pad) and 1 (token)")
    mask = mask.bool()
    pads = (~mask).sum(dim=1)
    if (pads == mask.shape[1]).any():
        raise ValueError("attention_mask has a row with no token (all 0): every prompt needs at least one")
    if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device)[None, :] >= pads[:, None]):
        raise ValueError("attention_mask must be left padding (each row: its 0s, then its 1s), as HF's generate "
                         "wants decoder-only prompts; right padding or holes are not supported")
    return pads.tolist() if pads.any() else None
