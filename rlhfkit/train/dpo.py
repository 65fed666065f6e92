"""`rlhf dpo`: direct preference optimisation and its variants on preference pairs.

Implementation details (each has a failure mode it prevents):

1. Data: explicit or implicit-prompt pairs, strings or conversations (rendered with the chat
   template), and rankings, which are expanded to their untied pairs *after* the train/eval split
   (one ranking's pairs never straddle it); pairs flagged as ties are dropped. Prompt and
   responses are tokenised separately, EOS is appended to both responses and kept out of the
   prompt; an over-long pair keeps the prompt's end (``max_prompt_length``) and cuts the responses
   on the right (RLHF-DETAILS item 25).
2. Loss on the SUM of response-token log-probs, prompt masked (item 22); the variants (sigmoid,
   cdpo, hinge, ipo, simpo + optional RPO NLL) are one dispatch in ``losses.dpo_loss``, which
   documents which of them are length-normalised (ipo, simpo) and reference-free (simpo).
3. Reference = the starting (SFT) model, frozen: eval mode, no_grad, dropout off (items 7, 23).
   With LoRA it is the same model with the adapter disabled, so the base weights exist once.
4. ``precompute_ref_logprobs``: one sharded pass before training scores every train/eval pair
   with the reference and caches the (N, 2) log-probs in ``ref_logprobs/<fingerprint>``, where
   the fingerprint hashes the tokenised pairs (data content and max lengths), the tokenizer, the
   reference weights and the dtype; a resumed or repeated run reads the cache instead. Without an
   evaluation that samples, the full-model reference is then freed.
5. Chosen and rejected go through the model in ONE (2B, T) forward (rows [0, B) chosen, [B, 2B)
   rejected): half the kernel launches, and both see identical weights and numerics. With
   ``padding_free`` (the default) the 2B sequences are bin-packed into rows as wide as the longest
   instead (data/padding_free.py) and their log-probs summed back per sequence, in the same order;
   the reference pass (live or precomputed) packs the same way.
6. The loss is summed over the pairs of the whole optimizer step (all micro-batches, all
   processes) and divided by the step's global pair count, with the same deterministic data order
   as SFT, so accumulation == bigger batch, 2 processes x b == 1 x 2b, and resume needs only the
   step. Gradients sync on the last micro-batch only.
7. At step 0 the policy is the reference: the first logged loss is ln 2 and all margins are 0
   (item 26); a different number means the reference or the masking is wrong.
8. Every log step: loss, rewards/chosen, rewards/rejected, margins, accuracy, logps/chosen,
   logps/rejected (+ nll with rpo_alpha), grad_norm, lr.
9. Evaluation (step 0, every ``eval_every`` steps, end): held-out loss/accuracy/margins, and the
   sequence-level KL to the reference estimated from policy samples for held-out prompts,
   KL = mean over samples of sum over sampled tokens of (logp_policy - logp_ref), both at the
   sampling temperature (items 12, 28); with ``gold`` also the samples' gold reward (``eval_gold``;
   :func:`rlhfkit.gold.resolve_gold`: the synthetic world's, the user's ``module:function`` or a
   held-out reward-model directory), named in the first line of metrics.jsonl and in summary.json.
10. Soft labels: pairs with a ``label_confidence`` column c (e.g. ``rlhf label export
    aggregate=dawid_skene``) train loss_type sigmoid as conservative DPO with a per-pair flip
    probability eps = 1 - c (Mitchell 2023), and cdpo with that composed with ``label_smoothing``
    (``losses.dpo_loss``); pairs without it count as c = 1. The other loss types have no soft-label
    form: they ignore the column, with a warning (and ``soft_labels: "ignored"`` in summary.json).
11. Checkpoints, resume and stop_after as in SFT; the final model is a plain Hugging Face
    directory (LoRA merged) plus summary.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from rlhfkit.config import DPOConfig
from rlhfkit.data.collate import PairCollator, response_batch, take, tokenize_pairs
from rlhfkit.distributed import sum_across
from rlhfkit.errors import DataError
from rlhfkit.gold import describe_gold, resolve_gold
from rlhfkit.logprobs import sequence_logprobs
from rlhfkit.losses import DPO_REFERENCE_FREE, dpo_loss
from rlhfkit.modeling import apply_lora, chat_renderer, load_causal_lm, load_tokenizer, save_hf
from rlhfkit.train.common import (RunState, batch_indices, clip_and_step, micro_batches, prepare_optimisation,
                                  progress, start_run, write_json)
from rlhfkit.train.data import load_split

log = logging.getLogger(__name__)

PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "margins", "accuracy", "logps/chosen", "logps/rejected")


def train(cfg: DPOConfig) -> Path:
    acc, run_dir = start_run(cfg)
    tok = load_tokenizer(cfg.tokenizer or cfg.model)
    train_ds, eval_ds, n_trunc, data_report, sample_prompts = _data(cfg, tok)
    collate = PairCollator(tok.pad_token_id, "right", padding_free=cfg.padding_free)
    model = load_causal_lm(cfg.model, tok, dtype=cfg.dtype, disable_dropout=cfg.disable_dropout)
    if cfg.lora_r:
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=cfg.lora_target_modules)
    reference = _Reference(cfg, acc, tok, needs_copy=not cfg.lora_r and (
        cfg.loss_type not in DPO_REFERENCE_FREE or bool(sample_prompts)))
    world, rank = acc.num_processes, acc.process_index
    model, optimizer, scheduler, n_steps, global_batch = prepare_optimisation(cfg, acc, model, len(train_ds))
    reference.policy = model
    if cfg.precompute_ref_logprobs and reference.used:  # detail 4 above (item 23)
        splits = {"train": train_ds, **({"eval": eval_ds} if eval_ds is not None else {})}
        reference.precompute(splits, collate, run_dir, keep_copy=bool(sample_prompts))

    soft = data_report["soft_labels"] == "used"

    def pair_loss(logps: torch.Tensor, n_tok: torch.Tensor, ref_c, ref_r, num_pairs, confidence):
        # logps, n_tok: (2B,) in PairCollator's layout, chosen rows first.
        pc, pr = logps.chunk(2)
        nc, nr = n_tok.chunk(2)
        return dpo_loss(pc, pr, ref_c, ref_r, loss_type=cfg.loss_type, beta=cfg.beta,
                        label_smoothing=cfg.label_smoothing,
                        gamma=cfg.simpo_gamma if cfg.loss_type == "simpo" else 0.0,
                        chosen_tokens=nc, rejected_tokens=nr, rpo_alpha=cfg.rpo_alpha, num_pairs=num_pairs,
                        confidence=confidence if soft else None)

    def to_device(b: dict) -> dict:
        return {k: v.to(acc.device) for k, v in b.items()}

    run = RunState(cfg, acc, run_dir)
    start = run.start
    gold_fn = gold_name = None
    if cfg.gold and sample_prompts:
        gold_fn = resolve_gold(cfg.gold, device=acc.device, max_length=cfg.max_length)
        gold_name = describe_gold(cfg.gold)
    elif cfg.gold:
        log.warning("gold is set but nothing is sampled to score (eval_sample_prompts=0 or no evaluation "
                    "prompts): no gold reward is logged")

    def evaluate() -> dict[str, float]:
        if eval_ds is None:
            return {}
        net = acc.unwrap_model(model)  # no DDP hooks: shards may differ in batch count
        net.eval()
        sums = dict.fromkeys(("loss", *PAIR_METRICS), 0.0)
        mine = list(range(rank, len(eval_ds), world))
        with torch.no_grad():
            for i in range(0, len(mine), cfg.eval_batch_size):
                idx = mine[i:i + cfg.eval_batch_size]
                b = to_device(collate(eval_ds.select(idx).to_list()))
                ref_c, ref_r = reference.for_pairs("eval", idx, b)
                with acc.autocast():
                    lp, n_tok = sequence_logprobs(net, b)  # (2B,)
                # num_pairs 1: the loss is the sum over these pairs
                loss, m = pair_loss(lp, n_tok, ref_c, ref_r, 1, b["confidence"])
                sums["loss"] += loss.item()
                for k in PAIR_METRICS:
                    sums[k] += m[k] * len(idx)
        out = {f"eval_{k}": v for k, v in _global_mean(acc, sums, len(eval_ds)).items()}
        if sample_prompts:
            out.update(_sampled_eval(cfg, acc, net, tok, sample_prompts, reference.logps, gold_fn))
        net.train()
        return out

    initial_eval = run.initial_eval(evaluate, {"gold": gold_name} if gold_name else None)
    model.train()
    bar = progress(n_steps, start, acc, "dpo")
    t0, pairs_seen = time.time(), 0
    for step in range(start, n_steps):
        idx = batch_indices(step, n_examples=len(train_ds), global_batch=global_batch, seed=cfg.seed)
        mbs = list(micro_batches(idx, per_device=cfg.per_device_batch_size,
                                 accumulation=cfg.gradient_accumulation_steps, rank=rank, world=world))
        sums = dict.fromkeys(("loss", *PAIR_METRICS, *(("nll",) if cfg.rpo_alpha else ())), 0.0)
        for j, mb in enumerate(mbs):
            b = to_device(collate(take(train_ds, mb)))
            ref_c, ref_r = reference.for_pairs("train", mb, b)  # first: LoRA toggles the adapter
            sync = j == len(mbs) - 1
            with nullcontext() if sync else acc.no_sync(model):
                with acc.autocast():
                    lp, n_tok = sequence_logprobs(model, b)  # (2B,) one forward for chosen + rejected
                # Detail 6 above: divided by the global pair count; DDP averages gradients over processes,
                # hence the factor `world`.
                loss, m = pair_loss(lp, n_tok, ref_c, ref_r, global_batch, b["confidence"])
                acc.backward(loss * world)
            sums["loss"] += loss.item() * global_batch  # back to a sum over this micro-batch's pairs
            for k in sums.keys() - {"loss"}:
                sums[k] += m[k] * len(mb)
        grad_norm = clip_and_step(acc, model, optimizer, scheduler, cfg.max_grad_norm)
        means = _global_mean(acc, sums, global_batch)
        if grad_norm is None:  # NaN/inf: the update was skipped
            run.nonfinite(step + 1, means["loss"])
        pairs_seen += global_batch
        done = step + 1
        metrics = dict(means, grad_norm=grad_norm, lr=scheduler.get_last_lr()[0],
                       epoch=done * global_batch / len(train_ds))
        shown = {"loss": f"{means['loss']:.4f}", "acc": f"{means['accuracy']:.2f}"}
        if run.end_step(bar, done, n_steps, metrics, evaluate, {"loss": means["loss"]}, shown):
            return run.latest_dir

    final = run_dir / "final"
    summary = {
        "stage": "dpo", "loss_type": cfg.loss_type, "beta": cfg.beta, "steps": n_steps,
        "global_batch": global_batch, "processes": world, "train_pairs": len(train_ds),
        "eval_pairs": len(eval_ds) if eval_ds is not None else 0, "dropped_after_truncation": n_trunc,
        "data": data_report, "ref_logprobs_cache": reference.cache_status, "reference": reference.kind,
        "gold": gold_name,
        **{f"initial_{k}": v for k, v in initial_eval.items()},
        **{f"final_{k}": v for k, v in run.last_eval.items()},
        "pairs_per_second": pairs_seen / max(time.time() - t0, 1e-9), "model_dir": str(final),
    }

    def save(final: Path) -> None:
        save_hf(acc.unwrap_model(model), tok, final)
        write_json(run_dir / "summary.json", summary)

    return run.finish(bar, n_steps, {"final": True}, save)


def _global_mean(acc, sums: dict[str, float], count: int) -> dict[str, float]:
    """Per-process sums -> means over ``count`` items on all processes, in one collective."""
    return {k: v / max(count, 1) for k, v in sum_across(acc, sums).items()}


def _data(cfg: DPOConfig, tok):
    """Tokenised train / eval pairs (detail 1 above), the truncation count, the data report and the
    held-out prompts the sampled evaluation uses."""
    train_rows, eval_rows, data_report = load_split(cfg, "pairs", render_chat=chat_renderer(tok))
    if not train_rows:
        raise DataError("no preference pairs to train on (every pair is a tie)", source=cfg.data)
    train_ds, n_trunc = tokenize_pairs(train_rows, tok, max_length=cfg.max_length,
                                       max_prompt_length=cfg.max_prompt_length)
    eval_ds = tokenize_pairs(eval_rows, tok, max_length=cfg.max_length,
                             max_prompt_length=cfg.max_prompt_length)[0] if eval_rows else None
    sample_prompts = list(dict.fromkeys(r["prompt"] for r in eval_rows))[:cfg.eval_sample_prompts]
    data_report["soft_labels"] = "none"
    if any("label_confidence" in r for r in train_rows):  # detail 10 above
        data_report["soft_labels"] = "used" if cfg.loss_type in ("sigmoid", "cdpo") else "ignored"
        if data_report["soft_labels"] == "ignored":
            log.warning("the data has soft labels (label_confidence), which loss_type %r has no form for: "
                        "they are ignored (use loss_type sigmoid or cdpo to train on them)", cfg.loss_type)
    return train_ds, eval_ds, n_trunc, data_report, sample_prompts


class _Reference:
    """The reference policy (detail 3 above): a frozen copy of the starting model (full fine-tuning),
    the policy itself with its LoRA adapter disabled, or none (SimPO without a sampled evaluation);
    its pair log-probs come live or from the fingerprinted cache (detail 4)."""

    def __init__(self, cfg: DPOConfig, acc, tok, *, needs_copy: bool):
        self.cfg, self.acc, self.tok = cfg, acc, tok
        self.used = cfg.loss_type not in DPO_REFERENCE_FREE  # simpo trains without one
        self.copy = None
        if needs_copy:
            self.copy = load_causal_lm(cfg.model, tok, dtype=cfg.dtype, disable_dropout=True)
            self.copy.eval().requires_grad_(False).to(acc.device)
        self.kind = "adapter disabled" if cfg.lora_r else "frozen copy" if needs_copy else "none"
        self.policy = None  # the (prepared) policy, set once it exists: the LoRA reference is inside it
        self.cache: dict[str, torch.Tensor] | None = None
        self.cache_status = "off"

    @torch.no_grad()
    def logps(self, batch: dict, temperature: float = 1.0) -> torch.Tensor:
        """(2B,) or (S,) summed reference log-probs of the response tokens of ``batch``."""
        if not self.cfg.lora_r:
            return sequence_logprobs(self.copy, batch, temperature=temperature)[0]
        net = self.acc.unwrap_model(self.policy)  # LoRA: the same weights, adapter off, dropout off
        was_training = net.training
        net.eval()
        with net.disable_adapter():
            lp = sequence_logprobs(net, batch, temperature=temperature)[0]
        net.train(was_training)
        return lp

    def precompute(self, splits: dict, collate, run_dir: Path, *, keep_copy: bool) -> None:
        model = self.copy if self.copy is not None else self.acc.unwrap_model(self.policy)
        self.cache, self.cache_status = _reference_cache(self.cfg, self.acc, self.tok, splits, model,
                                                         self.logps, collate, run_dir)
        if not keep_copy:
            self.copy = None  # nothing left that needs the reference: free its memory

    def for_pairs(self, split: str, idx: list[int], b: dict):
        """(B,), (B,) reference log-probs of chosen and rejected: from the cache or live."""
        if not self.used:
            return None, None
        if self.cache is not None:
            r = self.cache[split][idx].to(self.acc.device)  # (B, 2)
            return r[:, 0], r[:, 1]
        with self.acc.autocast():
            return self.logps(b).chunk(2)


# ----------------------------------------------------------------------------- reference cache


def _fingerprint(cfg: DPOConfig, tok, splits: dict, ref_model) -> str:
    """sha256 over everything the reference log-probs depend on (detail 4 above)."""
    import numpy as np

    h = hashlib.sha256()
    h.update(json.dumps({"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length,
                         "dtype": cfg.dtype, "mixed_precision": cfg.mixed_precision}).encode())
    backend = getattr(tok, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    h.update(vocab.encode())
    for name, ds in splits.items():  # the tokenised pairs: data content after truncation
        h.update(name.encode())
        for col in ("prompt_ids", "chosen_ids", "rejected_ids"):
            for ids in ds[col]:
                h.update(np.asarray(ids, dtype=np.int64).tobytes())
                h.update(b"|")
    for key, t in sorted(ref_model.state_dict().items()):
        if "lora_" in key:  # with LoRA the reference is the base weights alone
            continue
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def _reference_cache(cfg: DPOConfig, acc, tok, splits: dict, ref_model, ref_logps, collate,
                     run_dir: Path) -> tuple[dict[str, torch.Tensor], str]:
    """``{split: (N, 2) [chosen, rejected] reference log-probs}`` and "hit" or "computed"."""
    from safetensors.torch import load_file, save_file

    path = run_dir / "ref_logprobs" / f"{_fingerprint(cfg, tok, splits, ref_model)}.safetensors"
    world, rank = acc.num_processes, acc.process_index
    # A hit only if every process sees the file: otherwise some would skip the gather below.
    if sum_across(acc, {"hit": path.is_file()})["hit"] == world:
        log.info("reference log-probs: reusing %s", path)
        return load_file(str(path)), "hit"
    out = {}
    for name, ds in splits.items():
        # Process r scores pairs r, r + world, ...; one gather reassembles the original order.
        mine = list(range(rank, len(ds), world))
        per_rank = math.ceil(len(ds) / world)
        vals = torch.zeros(per_rank, 2, device=acc.device)  # (L, 2), zero-padded shard
        for i in range(0, len(mine), cfg.eval_batch_size):
            b = collate(ds.select(mine[i:i + cfg.eval_batch_size]).to_list())
            b = {k: v.to(acc.device) for k, v in b.items()}
            with acc.autocast():
                lp = ref_logps(b)  # (2B,)
            vals[i:i + len(lp) // 2] = torch.stack(lp.float().chunk(2), dim=1)
        if world > 1:
            vals = acc.gather(vals)  # (world * L, 2), rank-major
        # Row k of rank r holds pair r + k * world: transpose to pair order, drop the padding.
        out[name] = vals.view(world, per_rank, 2).transpose(0, 1).reshape(-1, 2)[:len(ds)].cpu().contiguous()
    if acc.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(out, str(tmp))
        os.replace(tmp, path)
    acc.wait_for_everyone()
    log.info("reference log-probs: computed for %s pairs, cached in %s",
             " + ".join(str(len(d)) for d in splits.values()), path)
    return out, "computed"


# ----------------------------------------------------------------------------- sampled evaluation


def _sampled_eval(cfg: DPOConfig, acc, net, tok, prompts: list[str], ref_logps,
                  gold_fn=None) -> dict[str, float]:
    """Sequence KL to the reference (and ``gold_fn``'s gold reward) from policy samples (detail 9
    above; item 28).

    Each process samples its share of the prompts. KL(policy || ref) = E_{y ~ policy}[log p(y) -
    log ref(y)], estimated per sample by the summed per-token log-ratio of the sampled tokens
    (EOS included), scored on the sampled ids, not on re-tokenised text.
    """
    from rlhfkit.generation import sample_completions

    world, rank = acc.num_processes, acc.process_index
    mine = prompts[rank::world]
    sums = {"kl": 0.0, "sample_length": 0.0, **({"gold": 0.0} if gold_fn else {})}
    if mine:
        devices = [acc.device] if acc.device.type == "cuda" else []
        # Sampling must not move the training RNG, and runs under the autocast its log-probs are
        # scored with (with LoRA, peft's generate bypasses the forward accelerate patched).
        with torch.random.fork_rng(devices=devices), acc.autocast():
            rows = sample_completions(net, tok, mine, max_new_tokens=cfg.eval_max_new_tokens,
                                      temperature=cfg.eval_temperature, batch_size=cfg.eval_batch_size,
                                      seed=cfg.seed + rank, return_ids=True)
        with torch.no_grad():
            for i in range(0, len(rows), cfg.eval_batch_size):
                chunk = rows[i:i + cfg.eval_batch_size]
                b = response_batch([r["prompt_ids"] for r in chunk], [r["completion_ids"] for r in chunk],
                                   tok.pad_token_id)
                b = {k: v.to(acc.device) for k, v in b.items()}
                with acc.autocast():
                    lp = sequence_logprobs(net, b, temperature=cfg.eval_temperature)[0]  # (S,)
                    lr = ref_logps(b, temperature=cfg.eval_temperature)  # (S,)
                sums["kl"] += (lp - lr).sum().item()
        sums["sample_length"] = float(sum(r["num_tokens"] for r in rows))
        if gold_fn:
            sums["gold"] = float(sum(gold_fn([r["prompt"] for r in rows], [r["completion"] for r in rows])))
    return {f"eval_{k}": v for k, v in _global_mean(acc, sums, len(prompts)).items()}
