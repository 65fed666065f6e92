"""`rlhf sft`: supervised fine-tuning of a causal LM on demonstrations.

Implementation details (each has a failure mode it prevents):

1. Data: any format the data layer normalises to prompt/completion (``text``,
   ``prompt``/``completion``, conversational ``messages`` rendered with the tokenizer's chat
   template). Prompt and completion are tokenised separately; EOS is appended to the completion
   so the model learns to stop (RLHF later penalises completions that never stop).
2. Loss on completion tokens only by default (``completion_only_loss``); the prompt is context,
   not a target. With ``false`` the whole sequence is trained (plain LM pre-training).
3. The loss is the NLL *summed* over loss tokens of the whole optimizer step -- all
   micro-batches on all processes -- divided by that step's total token count. Per-micro-batch
   means would make gradient accumulation differ from a bigger batch (torchtune #2307).
   Gradients are synchronised across processes only on the last micro-batch (``no_sync``).
4. Deterministic data order: global step s reads a fixed slice of a per-epoch permutation seeded
   by (seed, epoch). 1 process x batch 2b and 2 processes x batch b see the same global batch,
   and resume needs only the step number.
5. AdamW (no decay on 1-D params), linear warmup then cosine/linear decay, gradient clipping
   by global norm. The scheduler steps once per optimizer step regardless of process count.
6. Optional packing into ``max_length`` blocks with per-example position ids and an explicit
   block-diagonal causal mask (transformers derives one from position ids only without a KV
   cache, and OPT never does: examples then attend to each other). The label crossing a boundary
   is masked, so a packed batch's loss equals the unpacked one's (see data/collate.py). Every
   forward passes ``use_cache=False``.
6b. Without packing, ``padding_free`` (the default) bin-packs each micro-batch's examples into rows
   as wide as the longest of them, with the same per-example positions and mask
   (data/padding_free.py): the same examples and token-level loss as padded batches, less compute.
7. Dropout is off by default (the SFT model becomes the RLHF reference; item 7).
8. Checkpoints every ``save_every`` steps are atomic (temp dir + rename); ``resume: true``
   restores model, optimizer, scheduler, RNG states and the step, and trims metrics.jsonl to
   that step so the log continues without duplicates.
9. Held-out loss/perplexity before training and every ``eval_every`` steps; the final model is a
   plain Hugging Face directory (LoRA merged) plus ``summary.json``.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from rlhfkit.config import SFTConfig
from rlhfkit.data.collate import SFTCollator, pack, take, tokenize_sft
from rlhfkit.data.padding_free import packed_inputs
from rlhfkit.distributed import sum_across
from rlhfkit.losses import IGNORE_INDEX, token_nll
from rlhfkit.modeling import apply_lora, chat_renderer, load_causal_lm, load_tokenizer, save_hf
from rlhfkit.train.common import (RunState, batch_indices, clip_and_step, micro_batches, prepare_optimisation,
                                  progress, start_run, write_json)
from rlhfkit.train.data import load_split

log = logging.getLogger(__name__)


def train(cfg: SFTConfig) -> Path:
    acc, run_dir = start_run(cfg)

    tok = load_tokenizer(cfg.tokenizer or cfg.model)
    train_rows, eval_rows, data_report = load_split(cfg, "sft", render_chat=chat_renderer(tok))
    train_ds, n_trunc = tokenize_sft(train_rows, tok, max_length=cfg.max_length,
                                     truncation_side=cfg.truncation_side)
    eval_ds = tokenize_sft(eval_rows, tok, max_length=cfg.max_length,
                           truncation_side=cfg.truncation_side)[0] if eval_rows else None
    if cfg.packing:
        train_ds = pack(train_ds, cfg.max_length)
    collate = SFTCollator(tok.pad_token_id, "right", completion_only=cfg.completion_only_loss,
                          padding_free=cfg.padding_free)

    model = load_causal_lm(cfg.model, tok, dtype=cfg.dtype, disable_dropout=cfg.disable_dropout)
    if cfg.lora_r:
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=cfg.lora_target_modules)
    world, rank = acc.num_processes, acc.process_index
    model, optimizer, scheduler, n_steps, global_batch = prepare_optimisation(cfg, acc, model, len(train_ds))

    run = RunState(cfg, acc, run_dir)
    start = run.start

    def evaluate() -> dict[str, float]:
        if eval_ds is None:
            return {}
        net = acc.unwrap_model(model)  # no DDP hooks: shards may differ in batch count
        net.eval()
        nll = n = 0.0
        mine = list(range(rank, len(eval_ds), world))
        with torch.no_grad():
            for i in range(0, len(mine), cfg.eval_batch_size):
                b = collate(eval_ds.select(mine[i:i + cfg.eval_batch_size]).to_list())
                s, c = batch_nll(net, {k: v.to(acc.device) for k, v in b.items()})
                nll, n = nll + s.item(), n + c.item()
        net.train()
        total = sum_across(acc, {"nll": nll, "tokens": n})
        loss = total["nll"] / max(total["tokens"], 1)
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50))}

    initial_eval = run.initial_eval(evaluate)
    model.train()
    bar = progress(n_steps, start, acc, "sft")
    t0, tokens_seen = time.time(), 0.0
    for step in range(start, n_steps):
        idx = batch_indices(step, n_examples=len(train_ds), global_batch=global_batch, seed=cfg.seed)
        batches = [collate(take(train_ds, mb))
                   for mb in micro_batches(idx, per_device=cfg.per_device_batch_size,
                                           accumulation=cfg.gradient_accumulation_steps,
                                           rank=rank, world=world)]
        # Detail 3 above: normalise by the loss-token count of the whole step on all processes. DDP
        # averages gradients over processes, hence the factor `world`.
        local_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        step_tokens = sum_across(acc, {"tokens": local_tokens})["tokens"]
        scale = world / max(step_tokens, 1.0)
        nll_sum = 0.0
        for j, b in enumerate(batches):
            b = {k: v.to(acc.device) for k, v in b.items()}
            sync = j == len(batches) - 1
            with nullcontext() if sync else acc.no_sync(model):
                with acc.autocast():
                    nll, _ = batch_nll(model, b)
                acc.backward(nll * scale)
            nll_sum += nll.item()
        grad_norm = clip_and_step(acc, model, optimizer, scheduler, cfg.max_grad_norm)
        loss = sum_across(acc, {"nll": nll_sum})["nll"] / max(step_tokens, 1.0)
        if grad_norm is None:  # NaN/inf: the update was skipped
            run.nonfinite(step + 1, loss)
        tokens_seen += step_tokens
        done = step + 1
        metrics = dict(loss=loss, grad_norm=grad_norm, lr=scheduler.get_last_lr()[0], tokens=step_tokens,
                       epoch=done * global_batch / len(train_ds))
        if run.end_step(bar, done, n_steps, metrics, evaluate, {"loss": loss}, {"loss": f"{loss:.4f}"}):
            return run.latest_dir

    final = run_dir / "final"
    summary = {
        "stage": "sft", "steps": n_steps, "global_batch": global_batch, "processes": world,
        "train_examples": len(train_ds), "eval_examples": len(eval_ds) if eval_ds is not None else 0,
        "dropped_after_truncation": n_trunc, "data": data_report,
        "initial_eval_loss": initial_eval.get("eval_loss"),
        **{f"final_{k}": v for k, v in run.last_eval.items()},
        "tokens_per_second": tokens_seen / max(time.time() - t0, 1e-9), "model_dir": str(final),
    }

    def save(final: Path) -> None:
        net = acc.unwrap_model(model)
        save_hf(net, tok, final)
        if cfg.sample_prompts and eval_rows:
            _write_samples(cfg, net, tok, eval_rows, run_dir)
        write_json(run_dir / "summary.json", summary)

    return run.finish(bar, n_steps, {"final": True}, save)


def batch_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL of a collated SFT batch's label tokens and their count (detail 3 above). A packed or
    padding-free batch (position ids, no attention mask) gets an explicit block-diagonal causal mask
    (detail 6 above; `packed_inputs`)."""
    if "attention_mask" in batch:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    else:
        inputs = packed_inputs(model, batch)
    logits = model(**inputs, use_cache=False).logits  # (B, T, V)
    return token_nll(logits, batch["labels"])


def _write_samples(cfg: SFTConfig, model, tok, eval_rows: list[dict], run_dir: Path) -> None:
    from rlhfkit.data.loading import write_jsonl
    from rlhfkit.generation import sample_completions

    prompts = [r["prompt"] for r in eval_rows[:cfg.sample_prompts]]
    rows = sample_completions(model, tok, prompts, max_new_tokens=cfg.sample_max_new_tokens,
                              temperature=1.0, seed=cfg.seed)
    write_jsonl(run_dir / "samples.jsonl", rows)
