"""Tokenisation and collators: turning normalised rows into padded tensors.

Conventions (RLHF-DETAILS items 8, 10, 25):
- prompt and completion are tokenised separately, then concatenated, so the prompt/completion
  boundary is exact (tokenising the joined string can merge tokens across it).
- Token ids equal what the model's own chat template produces (``apply_chat_template(...,
  tokenize=True)``): a prompt that already starts with a special token -- the BOS a template
  writes (Llama-3, Mistral, Gemma) or its first control token (ChatML ``<|im_start|>``, Phi-3
  ``<|user|>``) -- was rendered by a template and is tokenised with ``add_special_tokens=False``,
  as the template intends; plain text gets the tokenizer's own special tokens (e.g. BOS).
  Adding them to rendered text gave ``[BOS, BOS, ...]``. The test is on the text, so it also
  holds for rendered prompts that were written to a file and read back (feedback exports).
- A response ends with exactly one EOS: a reply rendered by a template already ends with its
  end-of-turn token (EOS), followed at most by white space (ChatML's ``"<|im_end|>\n"``), which
  is dropped -- generation stops at EOS, so that is where a reward model must read its score; a
  reply without EOS gets one appended. Never EOS at the end of a prompt.
- ``completion_mask`` marks the tokens that carry loss (completion and its EOS).
- Over-long sequences are truncated on a documented side: "right" drops the completion's tail,
  "left" drops the prompt's beginning. Rows left with no completion token are dropped and
  counted.
- Training batches are right-padded; generation prompts are left-padded. Both carry
  ``position_ids = cumsum(mask) - 1`` so that left and right padding give the same log-probs.
- Packing concatenates examples into ``max_length`` blocks with position ids restarting at 0
  for every example. The forward gets an explicit block-diagonal causal mask built from those
  positions (:func:`packed_causal_mask`), so packed examples never attend to each other.
  Relying on transformers to derive it from the position ids is not enough: it does so only
  without a KV cache, and some architectures (OPT) never do. The label that crosses a boundary
  (an example's first token, "predicted" by the previous example's last) carries no loss.
- Padding-free batches (``padding_free`` on the collators; :mod:`rlhfkit.data.padding_free`) use
  the same layout and mask per micro-batch: its examples bin-packed into rows as wide as the
  longest, outputs gathered back per example, so they equal the padded batch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rlhfkit.data.padding_free import pack_sequences, packed_causal_mask  # noqa: F401 (re-exported)
from rlhfkit.losses import IGNORE_INDEX


def tokenize_sft(rows: list[dict], tokenizer, *, max_length: int,
                 truncation_side: Literal["left", "right"] = "right", num_proc: int | None = None):
    """Rows ``{"prompt", "completion"}`` -> ``datasets.Dataset`` with ``input_ids`` and
    ``completion_mask``; returns ``(dataset, n_dropped)`` where dropped rows had no completion
    token left after truncation."""
    import datasets

    def encode(batch: dict) -> dict:
        # Batched fast-tokenizer calls: a 5 MB JSONL tokenises in seconds.
        p_ids = encode_prompts(tokenizer, batch["prompt"])
        c_ids = encode_responses(tokenizer, batch["completion"])
        out_ids, out_mask = [], []
        for p, c in zip(p_ids, c_ids):
            ids, mask = p + c, [0] * len(p) + [1] * len(c)
            if len(ids) > max_length:
                if truncation_side == "right":
                    ids, mask = ids[:max_length], mask[:max_length]
                else:
                    ids, mask = ids[-max_length:], mask[-max_length:]
            out_ids.append(ids)
            out_mask.append(mask)
        return {"input_ids": out_ids, "completion_mask": out_mask}

    ds = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    ds = ds.map(encode, batched=True, remove_columns=ds.column_names, num_proc=num_proc,
                desc="tokenising" if len(ds) > 5000 else None)
    before = len(ds)
    ds = ds.filter(lambda m: any(m), input_columns="completion_mask")
    return ds, before - len(ds)


def pack(ds, block_size: int):
    """Concatenate tokenised examples into blocks of exactly ``block_size`` tokens.

    Adds ``position_ids`` that restart at 0 at each example (also when an example is split
    across two blocks, its second part starts again at 0: it is then trained as a fresh
    sequence). The last partial block is kept and padded by the collator.
    """
    import datasets

    blocks_ids, blocks_mask, blocks_pos = [], [], []
    cur_ids, cur_mask, cur_pos = [], [], []
    for ids, mask in zip(ds["input_ids"], ds["completion_mask"]):
        start = 0
        while start < len(ids):
            room = block_size - len(cur_ids)
            piece = slice(start, start + room)
            n = len(ids[piece])
            cur_ids += ids[piece]
            cur_mask += mask[piece]
            cur_pos += list(range(n))
            start += n
            if len(cur_ids) == block_size:
                blocks_ids.append(cur_ids)
                blocks_mask.append(cur_mask)
                blocks_pos.append(cur_pos)
                cur_ids, cur_mask, cur_pos = [], [], []
    if cur_ids:
        blocks_ids.append(cur_ids)
        blocks_mask.append(cur_mask)
        blocks_pos.append(cur_pos)
    return datasets.Dataset.from_dict(
        {"input_ids": blocks_ids, "completion_mask": blocks_mask, "position_ids": blocks_pos})


def take(ds, indices: list[int]) -> list[dict]:
    """Rows ``indices`` of a ``datasets.Dataset`` as a list of dicts, for a collator.

    One columnar read (``ds[indices]``) instead of ``ds.select(indices).to_list()``, which builds
    an indices-mapped Dataset on every call: 0.2 ms instead of 2.8 ms for 16 pairs, which was
    ~10% of a tiny model's training step (bench/reward_vs_trl.py profile)."""
    cols = ds[indices]
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B, T) positions counting real tokens only, 0 on padding."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).clamp(min=0) * mask


def pad(seqs: list[list[int]], value: int, side: Literal["left", "right"]) -> torch.Tensor:
    """Pad lists of ints to one (B, T_max) long tensor on the given side."""
    t_max = max(len(s) for s in seqs)
    out = torch.full((len(seqs), t_max), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        if side == "right":
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        else:
            out[i, t_max - len(s):] = torch.tensor(s, dtype=torch.long)
    return out


@dataclass
class SFTCollator:
    """Batch tokenised SFT examples.

    Output: ``input_ids`` (B, T), ``labels`` (B, T) with IGNORE_INDEX on prompt (when
    ``completion_only``) and padding, ``position_ids`` (B, T), and ``attention_mask`` (B, T)
    except for packed batches, which carry per-example position ids instead (see module doc).
    ``padding_free``: unpacked examples are bin-packed into rows as wide as the longest of them
    (:mod:`rlhfkit.data.padding_free`; ``padding_side`` then does not apply), with the packed
    layout and no attention mask; pre-packed examples (``pack``) already have no padding.
    """

    pad_token_id: int
    padding_side: Literal["left", "right"] = "right"
    completion_only: bool = True
    padding_free: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids = [e["input_ids"] for e in examples]
        if self.padding_free and "position_ids" not in examples[0]:
            loss = [e["completion_mask"] if self.completion_only else [1] * len(e["input_ids"])
                    for e in examples]
            b = pack_sequences(ids, self.pad_token_id, {"loss_mask": loss})
            # An example's first token would be "predicted" by the previous example's last one,
            # which it never attends to: no loss there, as in a padded row (whose first label
            # is never a target).
            no_loss = (b.pop("loss_mask") == 0) | (b["position_ids"] == 0)  # (R, W)
            return {**b, "labels": b["input_ids"].masked_fill(no_loss, IGNORE_INDEX)}
        input_ids = pad(ids, self.pad_token_id, self.padding_side)
        attn = pad([[1] * len(s) for s in ids], 0, self.padding_side)
        if self.completion_only:
            loss_mask = pad([e["completion_mask"] for e in examples], 0, self.padding_side)
        else:
            loss_mask = attn
        labels = input_ids.masked_fill(loss_mask == 0, IGNORE_INDEX)
        if "position_ids" in examples[0]:
            # Packed: padding forms its own segment (positions from 0) that is fully masked out
            # of the loss; the forward builds the block-diagonal mask (packed_causal_mask).
            pos = [e["position_ids"] for e in examples]
            position_ids = pad(pos, 0, self.padding_side)
            t_max = input_ids.shape[1]
            for i, p in enumerate(pos):
                n_pad = t_max - len(p)
                if n_pad:
                    fill = torch.arange(n_pad)
                    if self.padding_side == "right":
                        position_ids[i, len(p):] = fill
                    else:
                        position_ids[i, :n_pad] = fill
            # The first token of each packed example is predicted by the last token of the one
            # before it, which it never attends to: that label crosses a boundary, so no loss.
            labels = labels.masked_fill(position_ids == 0, IGNORE_INDEX)
            return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        return {"input_ids": input_ids, "attention_mask": attn, "labels": labels,
                "position_ids": position_ids_from_mask(attn)}


def left_pad_prompts(prompt_ids: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for generation: real tokens end at the same column for every row."""
    input_ids = pad(prompt_ids, pad_token_id, "left")
    attn = pad([[1] * len(s) for s in prompt_ids], 0, "left")
    return {"input_ids": input_ids, "attention_mask": attn}


def response_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_token_id: int,
                   padding_side: Literal["left", "right"] = "right") -> dict[str, torch.Tensor]:
    """Score-ready batch of (prompt, response) token lists, e.g. sampled completions.

    Output: ``input_ids``, ``attention_mask``, ``position_ids`` and ``response_mask`` (1 on the
    response tokens), all (B, T), the layout :func:`rlhfkit.logprobs.sequence_logprobs` reads.
    """
    seqs = [p + r for p, r in zip(prompt_ids, response_ids)]
    attn = pad([[1] * len(s) for s in seqs], 0, padding_side)
    return {"input_ids": pad(seqs, pad_token_id, padding_side), "attention_mask": attn,
            "position_ids": position_ids_from_mask(attn),
            "response_mask": pad([[0] * len(p) + [1] * len(r) for p, r in zip(prompt_ids, response_ids)],
                                 0, padding_side)}


# ----------------------------------------------------------------------------- preference pairs


def _special_prefixes(tokenizer) -> tuple[str, ...]:
    specials = set(tokenizer.all_special_tokens)
    specials |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return tuple(sorted((s for s in specials if s), key=len, reverse=True))


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Prompt texts -> token ids: special tokens added only to text that does not already start
    with one (see the module docstring), and never an EOS at the end (item 25)."""
    prefixes = _special_prefixes(tokenizer)
    rendered = [p.startswith(prefixes) for p in prompts]
    ids: list[list[int] | None] = [None] * len(prompts)
    for flag in (True, False):
        idx = [i for i, r in enumerate(rendered) if r is flag]
        if idx:
            enc = tokenizer([prompts[i] for i in idx], add_special_tokens=not flag)["input_ids"]
            for i, e in zip(idx, enc):
                ids[i] = e
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    # Some tokenizers append EOS as a special token; keep it out of prompts (OPT's BOS is its EOS:
    # a lone leading BOS stays).
    return [p[:-1] if p and p[-1] == eos and p != [bos] else p for p in ids]


def encode_responses(tokenizer, responses: list[str]) -> list[list[int]]:
    """Response texts -> token ids that end with exactly one EOS (module docstring): a rendered
    reply keeps everything through its last EOS and loses the white space a template writes after
    it; any other text gets EOS appended."""
    eos = tokenizer.eos_token_id
    out = []
    for r in tokenizer(responses, add_special_tokens=False)["input_ids"]:
        if eos in r:
            last = len(r) - 1 - r[::-1].index(eos)
            if not tokenizer.decode(r[last + 1:]).strip():
                out.append(r[:last + 1])
                continue
        out.append(r + [eos])
    return out


def fit_prompts(prompt_ids: list[list[int]], limit: int,
                bos_token_id: int | None) -> tuple[list[list[int]], int]:
    """Cut prompts longer than ``limit`` tokens from the left (the end is what a response
    answers), keeping a leading BOS; returns ``(prompts, number truncated)``."""
    out, n = [], 0
    for p in prompt_ids:
        if len(p) > limit:
            n += 1
            keep_bos = bos_token_id is not None and p[0] == bos_token_id and limit > 1
            p = ([p[0]] + p[len(p) - limit + 1:]) if keep_bos else p[len(p) - limit:]
        out.append(p)
    return out, n


def _fit(prompt: list[int], response: list[int], max_length: int,
         max_prompt_length: int) -> tuple[list[int], list[int]]:
    """Truncate a (prompt, response) pair: the prompt keeps its *last* ``max_prompt_length``
    tokens (the end is what the response answers), then the response is cut on the right."""
    if len(prompt) + len(response) > max_length and len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:]
    return prompt, response[: max(0, max_length - len(prompt))]


def tokenize_pairs(rows: list[dict], tokenizer, *, max_length: int, max_prompt_length: int | None = None):
    """Preference rows ``{"prompt", "chosen", "rejected", ["margin"], ["tie"], ["label_confidence"]}`` ->
    ``datasets.Dataset`` with ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (responses end
    with EOS unless truncated), ``margin`` (0.0 when absent), ``tie`` (False when absent) and
    ``confidence`` (the soft label ``label_confidence``; 1.0, a hard label, when absent).

    Returns ``(dataset, n_dropped)``; pairs whose chosen and rejected become identical after
    truncation carry no preference and are dropped.
    """
    import datasets

    max_prompt_length = max_prompt_length or max_length // 2

    def encode(batch: dict) -> dict:
        prompts = encode_prompts(tokenizer, batch["prompt"])
        chosen = encode_responses(tokenizer, batch["chosen"])
        rejected = encode_responses(tokenizer, batch["rejected"])
        out: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
        for p, c, r in zip(prompts, chosen, rejected):
            # Fit chosen and rejected against the same prompt cut so both see identical context.
            longest = c if len(c) >= len(r) else r
            p_cut, _ = _fit(p, longest, max_length, max_prompt_length)
            out["prompt_ids"].append(p_cut)
            out["chosen_ids"].append(_fit(p_cut, c, max_length, max_prompt_length)[1])
            out["rejected_ids"].append(_fit(p_cut, r, max_length, max_prompt_length)[1])
        return out

    table = {"prompt": [r["prompt"] for r in rows], "chosen": [r["chosen"] for r in rows],
             "rejected": [r["rejected"] for r in rows],
             "margin": [float(r.get("margin") or 0.0) for r in rows],
             "tie": [bool(r.get("tie", False)) for r in rows],
             "confidence": [float(r.get("label_confidence", 1.0)) for r in rows]}
    ds = datasets.Dataset.from_dict(table)
    ds = ds.map(encode, batched=True, remove_columns=["prompt", "chosen", "rejected"])
    before = len(ds)
    ds = ds.filter(lambda c, r: c != r and len(c) > 0 and len(r) > 0,
                   input_columns=["chosen_ids", "rejected_ids"])
    return ds, before - len(ds)


@dataclass
class PairCollator:
    """Batch B preference pairs as one (2B, T) tensor: rows [0, B) are prompt+chosen, rows
    [B, 2B) prompt+rejected, so one forward pass scores both (a reward model's two scores, or
    the policy's two log-probs in DPO).

    Output: ``input_ids``, ``attention_mask``, ``position_ids`` (2B, T); ``response_mask``
    (2B, T) 1 on response tokens (incl. EOS); ``margin``, ``tie`` and ``confidence`` (B,).
    ``padding_free``: the 2B sequences are bin-packed instead (:func:`pack_sequences`: (R, W)
    rows, no attention mask, ``segment_ids`` numbering them in the order above, so a pair's
    chosen and rejected may share a row or not and are gathered back by index), plus
    ``response_len`` (2B,).
    """

    pad_token_id: int
    padding_side: Literal["left", "right"] = "right"
    padding_free: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        seqs, masks = [], []
        for key in ("chosen_ids", "rejected_ids"):
            for e in examples:
                seqs.append(e["prompt_ids"] + e[key])
                masks.append([0] * len(e["prompt_ids"]) + [1] * len(e[key]))
        labels = {
            "margin": torch.tensor([float(e.get("margin", 0.0)) for e in examples]),
            "tie": torch.tensor([bool(e.get("tie", False)) for e in examples]),
            "confidence": torch.tensor([float(e.get("confidence", 1.0)) for e in examples]),
        }
        if self.padding_free:
            return {**pack_sequences(seqs, self.pad_token_id, {"response_mask": masks}),
                    "response_len": torch.tensor([sum(m) for m in masks]), **labels}
        input_ids = pad(seqs, self.pad_token_id, self.padding_side)
        attn = pad([[1] * len(s) for s in seqs], 0, self.padding_side)
        return {
            "input_ids": input_ids, "attention_mask": attn, "position_ids": position_ids_from_mask(attn),
            "response_mask": pad(masks, 0, self.padding_side), **labels,
        }


def encode_prompt_response(tokenizer, prompts: list[str], responses: list[str], *, max_length: int,
                           max_prompt_length: int | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + EOS) per row, truncated like `tokenize_pairs`: how a response
    is presented to a reward model for scoring."""
    max_prompt_length = max_prompt_length or max_length // 2
    p_ids = encode_prompts(tokenizer, prompts)
    r_ids = encode_responses(tokenizer, responses)
    return [_fit(p, r, max_length, max_prompt_length) for p, r in zip(p_ids, r_ids)]


def tokenize_rankings(rows: list[dict], tokenizer, *, max_length: int, max_prompt_length: int | None = None):
    """Ranking rows ``{"prompt", "responses", "ranks"}`` -> ``datasets.Dataset`` with
    ``prompt_ids`` (once per prompt), ``response_ids`` (K lists) and ``ranks``. Each response is
    stored and later scored once, however many of the C(K,2) pairs it takes part in."""
    import datasets

    max_prompt_length = max_prompt_length or max_length // 2
    prompts = encode_prompts(tokenizer, [r["prompt"] for r in rows])
    flat = encode_responses(tokenizer, [x for r in rows for x in r["responses"]])
    out: dict[str, list] = {"prompt_ids": [], "response_ids": [], "ranks": []}
    i = 0
    for row, p in zip(rows, prompts):
        resp = flat[i:i + len(row["responses"])]
        i += len(row["responses"])
        p_cut, _ = _fit(p, max(resp, key=len), max_length, max_prompt_length)
        out["prompt_ids"].append(p_cut)
        out["response_ids"].append([_fit(p_cut, x, max_length, max_prompt_length)[1] for x in resp])
        out["ranks"].append(list(row["ranks"]))
    return datasets.Dataset.from_dict(out)


@dataclass
class RankingCollator:
    """Batch prompts with K_g ranked responses each as one flat (N, T) tensor, N = sum of K_g,
    plus the pair index tensors of `rlhfkit.losses.ranking_batch` (better, worse, pair_weight,
    group, group_ids, num_prompts). ``padding_free``: the N sequences are bin-packed instead
    (:func:`pack_sequences`); a prompt's K responses stay in its micro-batch and the pair indices
    still number them 0..N-1 (``segment_ids``)."""

    pad_token_id: int
    padding_side: Literal["left", "right"] = "right"
    weighting: Literal["k_choose_2", "untied"] = "k_choose_2"
    padding_free: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        from rlhfkit.losses import ranking_batch

        seqs = [e["prompt_ids"] + r for e in examples for r in e["response_ids"]]
        resp_len = [len(r) for e in examples for r in e["response_ids"]]
        if self.padding_free:
            return {**pack_sequences(seqs, self.pad_token_id), "response_len": torch.tensor(resp_len),
                    **ranking_batch([e["ranks"] for e in examples], weighting=self.weighting)}
        input_ids = pad(seqs, self.pad_token_id, self.padding_side)
        attn = pad([[1] * len(s) for s in seqs], 0, self.padding_side)
        return {"input_ids": input_ids, "attention_mask": attn, "position_ids": position_ids_from_mask(attn),
                "response_len": torch.tensor(resp_len),
                **ranking_batch([e["ranks"] for e in examples], weighting=self.weighting)}
