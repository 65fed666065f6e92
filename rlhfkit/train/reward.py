"""`rlhf reward`: train a scalar reward model on human (or simulated) preferences.

Implementation details (RLHF-DETAILS items 1-7; each prevents a known failure):

1. Model: ``AutoModelForSequenceClassification`` with one output, trunk from a causal LM
   directory (base or SFT), new head initialised with std 1/sqrt(d_model+1) and bias 0 (item 3).
   The score is read at the last non-pad token; PAD != EOS is enforced when loading (item 2).
2. Pairs: chosen and rejected of B pairs go through ONE (2B, T) forward pass. Loss is
   Bradley-Terry ``-logsigmoid(r_c - r_r - m)`` with the optional Llama-2 margin m taken from a
   preference-strength column (``use_margin``) (item 1). With ``padding_free`` (the default) the
   2B sequences are bin-packed into rows as wide as the longest instead of padded, and each score
   is read at its sequence's last token (data/padding_free.py); so are a ranking batch's N.
3. Rankings: the K responses of a prompt are scored once and all C(K,2) untied pairs of that
   prompt form one batch element, each weighted 1/C(K,2) (InstructGPT sec. 3.5: shuffling the
   pairs in as independent examples overfits within an epoch). Prompts are stored once.
4. Ties (rows with ``tie: true``): dropped (default, counted in summary.json) or fitted with a
   Bradley-Terry-with-ties likelihood -- Rao-Kupper (1967), P(i>j) = pi_i / (pi_i + theta pi_j),
   or Davidson (1970), P(tie) proportional to nu sqrt(pi_i pi_j). Never read as a win. The same
   holds when pairs are read as rankings (``data_format: ranking``): a tied pair becomes ranks
   [1, 1] and is dropped, or fitted by ``losses.ranking_loss_with_ties``, which on 2-way rankings
   is the pair path's loss; tied pairs inside K-way rankings are fitted the same way (with
   ``drop`` they are left out, as InstructGPT does).
4b. Soft labels (a ``label_confidence`` column, e.g. from ``rlhf label export aggregate=dawid_skene``):
   the pair loss is the cross-entropy against the soft target c,
   ``-[c log sigmoid(d - m) + (1 - c) log sigmoid(-d - m)]`` (``losses.bradley_terry_loss``; with
   fitted ties, the win rows of ``bt_with_ties_loss`` likewise). Rows without the column count as
   c = 1, the plain loss. The ranking path (``data_format: ranking``) reads order only and ignores
   it (a warning says so).
5. Optional reward-centering regulariser coef * mean((r_c + r_r)^2) keeps rewards near 0.
6. Loss normalisation over the whole optimizer step (pairs, or prompts for rankings) on all
   processes, as in SFT, so accumulation == bigger batch and 2 processes == 1.
7. The usual recipe is one epoch with the LR annealed linearly to 0 (item 4; the default).
8. After training, the offset (and with ``mean_std`` the scale) that gives mean 0 (std 1) on
   responses of the policy RL starts from is stored in the model's config.json
   (``reward_offset``, ``reward_scale``: reward = (raw - offset) / scale); `RewardScorer`
   applies it, and plain transformers users can read it (item 5).
9. Evaluation on held-out pairs: loss, accuracy (also by preference strength), expected
   calibration error with reliability-diagram bins, and a length-bias audit (correlation of
   reward with length; accuracy when the chosen response is the longer vs the shorter one).
10. ``ensemble: K`` trains K models with seeds seed..seed+K-1 (members/member-k/); the final
    directory is member 0 plus ensemble.json listing the others, and scores report mean and std.
11. Dropout is off (item 7); checkpoints, resume and stop_after work as in SFT.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from functools import partial
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from rlhfkit.config import RewardConfig, save_config
from rlhfkit.data.collate import PairCollator, RankingCollator, take, tokenize_pairs, tokenize_rankings
from rlhfkit.data.formats import detect_format
from rlhfkit.data.loading import read_records
from rlhfkit.distributed import sum_across
from rlhfkit.errors import DataError
from rlhfkit.evaluate.metrics import (accuracy_by_strength, expected_calibration_error, length_bias_audit,
                                      pair_accuracy, reliability_bins)
from rlhfkit.losses import (bradley_terry_loss, bt_with_ties_loss, ranking_loss, ranking_loss_with_ties,
                            reward_centering_loss)
from rlhfkit.modeling import (REWARD_OFFSET, REWARD_SCALE, apply_lora, chat_renderer, load_reward_model,
                              load_tokenizer, save_hf)
from rlhfkit.scoring import batch_rewards, raw_rewards, score_encoded
from rlhfkit.train.common import (RunState, batch_indices, clip_and_step, micro_batches, prepare_optimisation,
                                  progress, start_run, write_json)
from rlhfkit.train.data import load_rows, load_split

log = logging.getLogger(__name__)


def train(cfg: RewardConfig) -> Path:
    """Train (an ensemble of) reward model(s); returns the final model directory."""
    if cfg.ensemble == 1:
        return _train_one(cfg)
    root = Path(cfg.output_dir)
    finals = []
    for k in range(cfg.ensemble):
        member = cfg.model_copy(update={"output_dir": str(root / "members" / f"member-{k}"),
                                        "seed": cfg.seed + k, "ensemble": 1})
        finals.append(_train_one(member))
    final = root / "final"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(finals[0], final)
    rel = [str(Path("..") / f.relative_to(root)) for f in finals[1:]]
    write_json(final / "ensemble.json", {"members": rel})
    save_config(cfg, root)
    return final


def _mode(cfg: RewardConfig) -> str:
    if cfg.data_format != "auto":
        return cfg.data_format
    first = read_records(cfg.data, split=cfg.data_split)[:1]
    fmt = detect_format(first[0].keys(), source=cfg.data) if first and isinstance(first[0], dict) else "pairs"
    return "ranking" if fmt == "ranking" else "pairs"


def _load_data(cfg: RewardConfig, tok, mode: str):
    """Tokenised train/eval datasets, plus a report for summary.json."""
    kind = "ranking" if mode == "ranking" else "preference"
    train_rows, eval_rows, report = load_split(cfg, kind, render_chat=chat_renderer(tok))
    if cfg.ties == "drop":
        train_rows, report["ties_dropped"] = _drop_ties(train_rows, mode)
        if not train_rows:
            raise DataError("no preference to train on: every training row is a tie and ties=drop (use "
                            "ties=rao_kupper or ties=davidson to fit them)", source=cfg.data)
    if mode == "ranking":
        first = read_records(cfg.data, split=cfg.data_split)[:100]
        if any(isinstance(r, dict) and r.get("label_confidence") is not None for r in first):
            log.warning("%s has a label_confidence column, which the ranking path (data_format=ranking) "
                        "ignores: it trains on the order alone; use data_format=pairs for soft labels",
                        cfg.data)
        make = lambda rows: tokenize_rankings(rows, tok, max_length=cfg.max_length,  # noqa: E731
                                              max_prompt_length=cfg.max_prompt_length)
        return make(train_rows), (make(eval_rows) if eval_rows else None), report, train_rows
    train_ds, dropped = tokenize_pairs(train_rows, tok, max_length=cfg.max_length,
                                       max_prompt_length=cfg.max_prompt_length)
    eval_ds = tokenize_pairs(eval_rows, tok, max_length=cfg.max_length,
                             max_prompt_length=cfg.max_prompt_length)[0] if eval_rows else None
    report["dropped_after_truncation"] = dropped
    report["soft_labels"] = any("label_confidence" in r for r in train_rows)
    return train_ds, eval_ds, report, train_rows


def _drop_ties(rows: list[dict], mode: str) -> tuple[list[dict], int]:
    """Training rows without the tied ones (ties=drop), and how many were dropped.

    Pairs: rows flagged ``tie``. Rankings: rows whose ranks are all equal, i.e. tied pairs read
    as rankings (ranks [1, 1]; a user's fully tied ranking row is refused when loading), which
    have no untied pair and would otherwise still count as a prompt in the loss's divisor. Tied
    pairs inside a K-way ranking are left to the loss (``ranking_loss`` ignores them).
    """
    if mode == "ranking":
        kept = [r for r in rows if len(set(r["ranks"])) > 1]
    else:
        kept = [r for r in rows if not r.get("tie")]
    return kept, len(rows) - len(kept)


def _pair_loss(cfg: RewardConfig, rewards: torch.Tensor, b: dict,
               soft: bool = False) -> tuple[torch.Tensor, int]:
    """Mean loss over this micro-batch and its number of units (pairs or prompts); ``soft``: train on
    the batch's ``confidence`` (soft labels, detail 4b above)."""
    if "better" in b:  # ranking batch: (N,) rewards, pairs given by index tensors
        better, worse = b["better"], b["worse"]
        if cfg.ties != "drop":  # tied pairs (equal ranks) are fitted as ties, as on the pair path
            loss, _ = ranking_loss_with_ties(rewards, better, worse, b["pair_weight"], b["tie_a"], b["tie_b"],
                                             b["tie_weight"], b["num_prompts"], cfg.tie_param, cfg.ties)
            better, worse = torch.cat([better, b["tie_a"]]), torch.cat([worse, b["tie_b"]])
        else:
            loss, _ = ranking_loss(rewards, better, worse, b["pair_weight"], b["num_prompts"])
        if cfg.center_coef:
            loss = loss + reward_centering_loss(rewards[better], rewards[worse], cfg.center_coef)
        return loss, int(b["num_prompts"])
    n = rewards.shape[0] // 2
    rc, rr = rewards[:n], rewards[n:]  # (B,), (B,)
    conf = b["confidence"] if soft else None  # (B,)
    if cfg.ties != "drop":
        loss, _ = bt_with_ties_loss(rc, rr, b["tie"], cfg.tie_param, cfg.ties, confidence=conf)
    else:
        loss, _ = bradley_terry_loss(rc, rr, margin=b["margin"] if cfg.use_margin else None, confidence=conf)
    if cfg.center_coef:
        loss = loss + reward_centering_loss(rc, rr, cfg.center_coef)
    return loss, n


def evaluate_pairs(model, batches, device) -> dict:
    """Score every held-out response once and compute the reward-model report (detail 9 above; item 6)."""
    rc, rr, lc, lr, strength, ties = [], [], [], [], [], []
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        r = raw_rewards(model, b).cpu()
        if "better" in b:  # ranking: every untied pair, then (as tie rows: out of accuracy/loss) tied ones
            rlen = b["response_len"].cpu()
            for i, j, tied in ((b["better"], b["worse"], False), (b.get("tie_a"), b.get("tie_b"), True)):
                if i is None:
                    continue
                i, j = i.cpu(), j.cpu()
                rc += r[i].tolist()
                rr += r[j].tolist()
                lc += rlen[i].tolist()
                lr += rlen[j].tolist()
                strength += [0.0] * len(i)
                ties += [tied] * len(i)
        else:
            n = r.shape[0] // 2
            lens = (b["response_len"] if "response_len" in b else b["response_mask"].sum(-1)).cpu()
            rc += r[:n].tolist()
            rr += r[n:].tolist()
            lc += lens[:n].tolist()
            lr += lens[n:].tolist()
            strength += b["margin"].cpu().tolist()
            ties += b["tie"].cpu().tolist()
    keep = ~np.asarray(ties, bool)
    rc_, rr_ = np.asarray(rc)[keep], np.asarray(rr)[keep]
    d = torch.tensor(rc_ - rr_)
    out = {
        "eval_pairs": int(keep.sum()),
        "eval_loss": float(torch.nn.functional.softplus(-d).mean()) if len(d) else math.nan,
        "eval_accuracy": pair_accuracy(rc_, rr_),
        "eval_ece": expected_calibration_error(rc_, rr_),
        "eval_reward_mean": float(np.mean(rc + rr)), "eval_reward_std": float(np.std(rc + rr)),
        **{f"eval_{k}": v
           for k, v in length_bias_audit(rc_, rr_, np.asarray(lc)[keep], np.asarray(lr)[keep]).items()},
    }
    extra = {"reliability_bins": reliability_bins(rc_, rr_)}
    if any(s != 0 for s in strength):
        extra["accuracy_by_strength"] = accuracy_by_strength(rc_, rr_, np.asarray(strength)[keep])
    return {**out, "_extra": extra}


def _train_one(cfg: RewardConfig) -> Path:
    acc, run_dir = start_run(cfg)
    tok = load_tokenizer(cfg.tokenizer or cfg.model)
    mode = _mode(cfg)
    train_ds, eval_ds, data_report, train_rows = _load_data(cfg, tok, mode)
    collator = RankingCollator if mode == "ranking" else PairCollator
    collate = collator(tok.pad_token_id, padding_free=cfg.padding_free)

    torch.manual_seed(cfg.seed)  # the head's initialisation is part of the seeded run
    model = load_reward_model(cfg.model, tok, dtype=cfg.dtype, disable_dropout=cfg.disable_dropout)
    if cfg.lora_r:
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=cfg.lora_target_modules)
    world, rank = acc.num_processes, acc.process_index
    model, optimizer, scheduler, n_steps, global_batch = prepare_optimisation(cfg, acc, model, len(train_ds))

    run = RunState(cfg, acc, run_dir)
    start = run.start

    def evaluate() -> dict:
        if eval_ds is None or not acc.is_main_process:
            return {}
        net = acc.unwrap_model(model)
        net.eval()
        batches = (collate(eval_ds.select(range(i, min(i + cfg.eval_batch_size, len(eval_ds)))).to_list())
                   for i in range(0, len(eval_ds), cfg.eval_batch_size))
        with torch.no_grad():
            res = evaluate_pairs(net, batches, acc.device)
        net.train()
        return res

    def evaluate_and_log(step: int) -> dict:
        """The scalars for metrics.jsonl; the full report (curves, bins) goes to eval.json."""
        res = evaluate()
        scalars = {k: v for k, v in res.items() if not k.startswith("_")}
        if res:
            write_json(run_dir / "eval.json", {"step": step, **scalars, **res["_extra"]})
        return scalars

    initial_eval = run.initial_eval(partial(evaluate_and_log, 0))
    model.train()
    bar = progress(n_steps, start, acc, "reward")
    t0 = time.time()
    for step in range(start, n_steps):
        idx = batch_indices(step, n_examples=len(train_ds), global_batch=global_batch, seed=cfg.seed)
        batches = [collate(take(train_ds, mb))
                   for mb in micro_batches(idx, per_device=cfg.per_device_batch_size,
                                           accumulation=cfg.gradient_accumulation_steps,
                                           rank=rank, world=world)]
        # Units (pairs, or prompts for rankings) in the whole step on all processes; each micro
        # loss is a mean over its units, re-weighted so the step's gradient is the global mean.
        units = [int(b["num_prompts"]) if "num_prompts" in b else b["margin"].shape[0] for b in batches]
        step_units = sum_across(acc, {"units": sum(units)})["units"]
        loss_sum = correct = 0.0
        for j, b in enumerate(batches):
            b = {k: v.to(acc.device) for k, v in b.items()}
            with nullcontext() if j == len(batches) - 1 else acc.no_sync(model):
                with acc.autocast():
                    rewards = batch_rewards(model, b)  # (2B,) or (N,)
                loss, n = _pair_loss(cfg, rewards, b, soft=bool(data_report.get("soft_labels")))
                acc.backward(loss * n * world / max(step_units, 1.0))
            loss_sum += loss.item() * n
            with torch.no_grad():
                if "better" in b:
                    if b["better"].numel():  # a micro-batch of tied pairs only has no order to get right
                        correct += float((rewards[b["better"]] > rewards[b["worse"]]).float().mean()) * n
                else:
                    correct += float((rewards[:n] > rewards[n:]).float().mean()) * n
        grad_norm = clip_and_step(acc, model, optimizer, scheduler, cfg.max_grad_norm)
        total = sum_across(acc, {"loss": loss_sum, "correct": correct})
        loss, accuracy = total["loss"] / max(step_units, 1.0), total["correct"] / max(step_units, 1.0)
        if grad_norm is None:  # NaN/inf: the update was skipped
            run.nonfinite(step + 1, loss)
        done = step + 1
        metrics = dict(loss=loss, accuracy=accuracy, grad_norm=grad_norm, lr=scheduler.get_last_lr()[0],
                       epoch=done * global_batch / len(train_ds))
        shown = {"loss": f"{loss:.4f}", "acc": f"{accuracy:.2f}"}
        if run.end_step(bar, done, n_steps, metrics, partial(evaluate_and_log, done), {"loss": loss}, shown):
            return run.latest_dir

    def save(final: Path) -> None:
        # Without accelerate's autocast wrapper: later stages load the saved model in fp32
        # (RewardScorer), so the offset/scale are measured as they will be applied.
        net = acc.unwrap_model(model, keep_fp32_wrapper=False)
        offset, scale = _normalisation(cfg, net, tok, train_rows, mode, acc.device)
        save_hf(net, tok, final, extra_config={REWARD_OFFSET: offset, REWARD_SCALE: scale})
        write_json(run_dir / "summary.json", {
            "stage": "reward", "mode": mode, "steps": n_steps, "global_batch": global_batch,
            "processes": world,
            "train_examples": len(train_ds), "eval_examples": len(eval_ds) if eval_ds is not None else 0,
            "data": data_report, "initial": initial_eval, "final": run.last_eval,
            "reward_offset": offset, "reward_scale": scale,
            "seconds": time.time() - t0, "model_dir": str(final)})

    return run.finish(bar, n_steps, {"final": True}, save)


def _normalisation(cfg: RewardConfig, model, tok, train_rows: list[dict], mode: str,
                   device) -> tuple[float, float]:
    """Offset/scale that give mean 0 (std 1) on responses of the RL starting policy (item 5)."""
    if cfg.normalize == "none":
        return 0.0, 1.0
    from rlhfkit.data.collate import encode_prompt_response

    if cfg.normalize_data:
        rows, _ = load_rows(cfg.normalize_data, "sft", render_chat=chat_renderer(tok),
                            skip_invalid=cfg.skip_invalid)
        texts = [(r["prompt"], r["completion"]) for r in rows]
    elif mode == "ranking":
        texts = [(r["prompt"], x) for r in train_rows for x in r["responses"]]
    else:
        texts = [(r["prompt"], x) for r in train_rows for x in (r["chosen"], r["rejected"])]
    texts = list(dict.fromkeys(texts))  # unique, in order
    rng = np.random.default_rng(cfg.seed)
    if len(texts) > cfg.normalize_samples:
        texts = [texts[i] for i in sorted(rng.choice(len(texts), cfg.normalize_samples, replace=False))]
    pairs = encode_prompt_response(tok, [p for p, _ in texts], [x for _, x in texts],
                                   max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
    model.eval()
    scores = score_encoded(model, pairs, tok.pad_token_id, batch_size=cfg.eval_batch_size, device=device)
    offset = float(np.mean(scores))
    scale = float(np.std(scores)) if cfg.normalize == "mean_std" and np.std(scores) > 0 else 1.0
    log.info("reward normalisation on %d responses: offset %.4f, scale %.4f", len(scores), offset, scale)
    return offset, scale
