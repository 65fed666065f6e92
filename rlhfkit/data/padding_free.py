"""Padding-free micro-batches: a micro-batch's examples bin-packed into as few rows as possible.

A padded (B, T) batch spends compute on ``B * T - sum(lengths)`` pad tokens. Here the examples of
ONE micro-batch (the same examples the padded batch would hold) are placed into rows of width
W = the longest of them by first-fit decreasing, each example with position ids restarting at 0.
The forward then gets an explicit block-diagonal causal mask (:func:`packed_causal_mask`), so no
example attends to another; transformers must never infer the mask from the positions (it does
so only without a KV cache, and OPT never does; see ``rlhfkit.data.collate``). Rows are as wide
as the longest example, not one row of ``sum(lengths)``: CPU attention is dense, and one long row
would cost ``sum(lengths)^2`` instead of about ``R * W^2``.

Per-example outputs are gathered back by ``segment_ids`` (R, W), the index of the example in the
order the caller listed them (-1 on padding): summed response log-probs and token counts by a
scatter-add (:func:`segment_sum`), a reward model's score at ``last_index`` (N,), the flat
``row * W + column`` of each example's last token. The numbers equal the padded batch's up to
float rounding (different matmul shapes), so losses, their normalisation and gradient
accumulation are unchanged.
"""

from __future__ import annotations

import torch


def packed_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) per-example positions of packed rows -> (B, 1, T, T) additive attention mask:
    0 where query t may see key s (same example, s <= t), the dtype's minimum elsewhere. A new
    example starts wherever the position is 0. Every row sees at least itself (padding forms its
    own segment), so no softmax row is empty."""
    seg = (position_ids == 0).long().cumsum(-1)  # (B, T) example index of each token
    t = position_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=position_ids.device).tril()  # (T, T)
    allowed = (seg.unsqueeze(2) == seg.unsqueeze(1)) & causal  # (B, T, T)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def first_fit_decreasing(lengths: list[int], width: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins of total length <= ``width``: longest first, each
    into the first bin with room. Every index is placed exactly once; within a bin, in placement
    order. Raises ValueError if one length exceeds ``width``."""
    if lengths and max(lengths) > width:
        raise ValueError(f"an example of {max(lengths)} tokens does not fit a row of {width}")
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: ties keep input order
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(width - lengths[i])
    return bins


def pack_sequences(seqs: list[list[int]], pad_token_id: int,
                   masks: dict[str, list[list[int]]] | None = None) -> dict[str, torch.Tensor]:
    """N token lists -> one padding-free batch of R rows of width W = max length.

    Output: ``input_ids`` (R, W) with ``pad_token_id`` after each row's last example;
    ``position_ids`` (R, W) restarting at 0 at every example, and on the padding tail too, so the
    tail is a segment of its own that sees only itself (no empty softmax row); ``segment_ids``
    (R, W) the index in ``seqs`` of each token's example, -1 on padding; ``last_index`` (N,) flat
    ``row * W + column`` of each example's last token; and every list of ``masks`` packed the
    same way, 0 on padding. No ``attention_mask``: the forward builds the block-diagonal one
    (:func:`packed_inputs`).
    """
    masks = masks or {}
    if any(len(s) == 0 for s in seqs):
        raise ValueError("padding-free batches cannot hold an empty sequence")
    width = max(len(s) for s in seqs)
    bins = first_fit_decreasing([len(s) for s in seqs], width)
    rows = len(bins)
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(rows, width, dtype=torch.long)
    segment_ids = torch.full((rows, width), -1, dtype=torch.long)
    packed = {k: torch.zeros(rows, width, dtype=torch.long) for k in masks}
    last_index = torch.zeros(len(seqs), dtype=torch.long)
    for r, members in enumerate(bins):
        col = 0
        for i in members:
            n = len(seqs[i])
            input_ids[r, col:col + n] = torch.tensor(seqs[i], dtype=torch.long)
            position_ids[r, col:col + n] = torch.arange(n)
            segment_ids[r, col:col + n] = i
            for k, m in masks.items():
                packed[k][r, col:col + n] = torch.tensor(m[i], dtype=torch.long)
            col += n
            last_index[i] = r * width + col - 1
        position_ids[r, col:] = torch.arange(width - col)  # the padding tail: its own segment
    return {"input_ids": input_ids, "position_ids": position_ids, "segment_ids": segment_ids,
            "last_index": last_index, **packed}


def is_padding_free(batch: dict) -> bool:
    """Whether ``batch`` came from :func:`pack_sequences` (it carries ``segment_ids``)."""
    return "segment_ids" in batch


def packed_inputs(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Forward kwargs of a packed batch (padding-free, or SFT ``packing``): ids, per-example
    positions and the (R, 1, W, W) block-diagonal causal mask in the model's dtype. Flash
    attention gets no mask: its variable-length path reads example boundaries from the positions
    (and takes no 4D mask)."""
    net = getattr(model, "module", model)  # DDP wraps the model; config and dtype live inside
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    attn_impl = str(getattr(net.config, "_attn_implementation", "") or "")
    if not attn_impl.startswith("flash"):
        inputs["attention_mask"] = packed_causal_mask(batch["position_ids"], net.dtype)
    return inputs


def segment_sum(values: torch.Tensor, segment_ids: torch.Tensor, n: int) -> torch.Tensor:
    """(R, L) per-token values, (R, L) segment ids (-1: none) -> (n,) per-example sums."""
    keep = segment_ids >= 0
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    return out.index_add(0, segment_ids[keep], values[keep])


def num_examples(batch: dict[str, torch.Tensor]) -> int:
    """How many examples a padding-free batch holds."""
    return int(batch["last_index"].shape[0])
