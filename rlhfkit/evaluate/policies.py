"""Evaluate a set of policies on the same prompts: reward, gold reward, win rate, KL, length, diversity.

`evaluate_policies` is what `rlhf evaluate` and the pipeline call for base / SFT / every RL or
DPO checkpoint. Implementation details that decide whether the numbers can be compared:

1. Every policy samples the same prompts with the same seed (common random numbers), so the
   reference evaluated against itself draws identical samples: win rate exactly 0.5, KL exactly 0.
2. Sequence KL(pi || pi_ref) = E_{y ~ pi}[log pi(y|x) - log pi_ref(y|x)], estimated from the
   policy's own samples by the summed per-token log-ratio of the *sampled ids* (EOS included;
   re-tokenised text need not give the sampled tokens back), both log-probs at the sampling
   temperature (RLHF-DETAILS item 12). This is the x-axis of the reward-vs-KL frontier.
3. Win rate against the reference pairs the i-th sample of a policy with the i-th sample of the
   reference (same prompt); a tie counts half. Its standard error is that of a mean of the
   0 / 0.5 / 1 outcomes (sqrt(w(1-w)/n) when there are no ties).
4. One model is in memory at a time: each policy is loaded, sampled, scored and freed; then the
   reference scores every other policy's samples; then the reward model scores all texts.
5. Distinct-n counts word n-grams inside each completion over all completions (Li et al. 2016):
   words, not token ids, so policies with different tokenizers stay comparable.
6. The gold reward is the user's choice (:mod:`rlhfkit.gold`): the synthetic world's, a
   ``module:function`` or a held-out reward-model directory; it scores every policy's samples after
   the proxy, and the result names it (``gold``). The completion-format rate is the synthetic
   grammar's, so only the synthetic gold adds it.
"""

from __future__ import annotations

import gc
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit.errors import ConfigError, DataError
from rlhfkit.evaluate.metrics import health_verdict
from rlhfkit.config.base import check_gold_spec
from rlhfkit.gold import describe_gold, gold_kind, resolve_gold

log = logging.getLogger(__name__)

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
DISPLAY_PROMPTS = 4  # prompts whose samples are kept for the side-by-side section of the report
DISPLAY_SAMPLES = 2  # samples per displayed prompt and policy


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct word n-grams / all word n-grams, n-grams taken inside each text (0 when none)."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def summarize(values: list[float] | np.ndarray) -> dict[str, Any]:
    """Mean, std and quantiles (q10 ... q90) of a sample of scores."""
    v = np.asarray(values, float)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "quantiles": {}}
    return {"mean": float(v.mean()), "std": float(v.std()),
            "quantiles": {f"q{round(q * 100)}": float(np.quantile(v, q)) for q in QUANTILES}}


def win_rate(mine: list[float] | np.ndarray, theirs: list[float] | np.ndarray) -> dict[str, float]:
    """Paired win rate of ``mine`` over ``theirs`` (ties count half) and its standard error."""
    a, b = np.asarray(mine, float), np.asarray(theirs, float)
    if a.shape != b.shape:
        raise ValueError(f"win rate needs paired scores, got {a.shape} and {b.shape}")
    if a.size == 0:
        return {"rate": math.nan, "se": math.nan, "wins": 0, "ties": 0, "losses": 0}
    outcome = (a > b) + 0.5 * (a == b)
    return {"rate": float(outcome.mean()), "se": float(outcome.std() / math.sqrt(a.size)),
            "wins": int((a > b).sum()), "ties": int((a == b).sum()), "losses": int((a < b).sum())}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _free() -> None:
    """Return the memory of models the caller has just deleted (before the next one loads)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def _sequence_logps(model, rows: list[dict], pad_id: int, *, temperature: float,
                    batch_size: int) -> np.ndarray:
    """Summed log-prob of each sample's completion ids, (N,). The chunking only depends on N and
    batch_size, so a model scoring the same rows twice gives bit-identical numbers."""
    from rlhfkit.data.collate import response_batch
    from rlhfkit.logprobs import sequence_logprobs

    device = next(model.parameters()).device
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        b = response_batch([r["prompt_ids"] for r in chunk], [r["completion_ids"] for r in chunk], pad_id)
        b = {k: v.to(device) for k, v in b.items()}
        out.append(sequence_logprobs(model, b, temperature=temperature)[0].double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def evaluate_policies(policies: dict[str, str | Path], prompts: list[str], *, reference: str,
                      reward_model: str | Path | None = None, gold: str | None = "synthetic",
                      num_samples: int = 1, max_new_tokens: int = 48, temperature: float = 1.0,
                      max_length: int = 128, seed: int = 0, batch_size: int = 64) -> dict:
    """Sample ``num_samples`` completions per prompt from each policy and measure them.

    ``policies`` maps a display name to a Hugging Face model directory; ``reference`` names the
    entry (the SFT model) that win rates and KL are measured against. ``reward_model`` (a
    directory written by `rlhf reward`) adds the proxy score, with its stored offset/scale;
    ``gold`` (a spec of :func:`rlhfkit.gold.resolve_gold`: "synthetic", "module:function" or a
    reward-model directory; None for none) adds the gold reward and the gold win rate, and the
    synthetic gold also the completion-format rate.

    Returns a JSON-serialisable dict: run settings, ``gold`` (what the gold was, or None),
    ``policies`` (name -> flat metrics: gold_*, rm_*, win_rate(_se), rm_win_rate(_se), kl(_se),
    length_tokens, length_words, distinct_1/2, eos_rate, format_rate) and ``samples`` (the first
    prompts with each policy's completions).
    """
    if reference not in policies:
        raise ConfigError(f"reference: '{reference}' is not one of the policies ({', '.join(policies)})")
    if not prompts:
        raise DataError("no prompts to evaluate on")
    if temperature <= 0:
        raise ConfigError("temperature: must be > 0 (the KL estimate needs sampled, not greedy, completions)")
    if num_samples < 1:
        raise ConfigError("num_samples: must be >= 1")
    gold_fn = None
    if gold is not None:
        try:
            gold = check_gold_spec(gold, "gold")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if gold_kind(gold) != "reward_model":  # a function that cannot be imported fails before sampling
            gold_fn = resolve_gold(gold)
    # Prompt-major: sample k of prompt j is row j * num_samples + k for every policy.
    expanded = [p for p in prompts for _ in range(num_samples)]
    device = _device()
    gen = {"max_new_tokens": max_new_tokens, "temperature": temperature, "batch_size": batch_size,
           "seed": seed}
    samples, own_logps, tokenizers = _sample_all(policies, expanded, device, gen)
    kl = _kl_to_reference(policies, reference, samples, own_logps, tokenizers, device, gen)
    rm = _reward_model_scores(reward_model, samples, device, max_length, batch_size) if reward_model else {}
    golds, fmt = _gold_scores(gold, gold_fn, samples, device, max_length, batch_size) if gold else ({}, {})

    results: dict[str, dict] = {}
    for name, rows in samples.items():
        m: dict[str, Any] = {"path": str(policies[name]), "n": len(rows)}
        if gold:
            m.update(_vs_reference("gold", golds[name], golds[reference]))
        if name in fmt:
            m["format_rate"] = fmt[name]
        if reward_model is not None:
            m.update(_vs_reference("rm", rm[name], rm[reference]))
        m.update(_sample_stats(rows, kl[name]))
        results[name] = m
    for m in results.values():  # item 34: a verdict on the samples, not only the scores
        m["health"] = health_verdict(m, results[reference])

    return {"reference": reference, "prompts": len(prompts), "num_samples": num_samples,
            "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
            "reward_model": None if reward_model is None else str(reward_model), "gold": describe_gold(gold),
            "policies": results, "samples": _side_by_side(prompts, num_samples, samples, golds, rm)}


def _sample_all(policies: dict[str, str | Path], expanded: list[str], device, gen: dict):
    """Sample each policy and score its samples under itself (details 1 and 4 above), one model in
    memory at a time. Returns (rows, own log-probs, tokenizer (vocab, pad id)) per policy."""
    from rlhfkit.generation import sample_completions
    from rlhfkit.modeling import load_causal_lm, load_tokenizer

    samples: dict[str, list[dict]] = {}
    own_logps: dict[str, np.ndarray] = {}
    tokenizers: dict[str, tuple[dict, int]] = {}
    for name, path in policies.items():
        log.info("evaluate: sampling %d completions from %s (%s)", len(expanded), name, path)
        tok = load_tokenizer(str(path))
        model = load_causal_lm(str(path), tok).to(device).eval()
        rows = sample_completions(model, tok, expanded, max_new_tokens=gen["max_new_tokens"],
                                  temperature=gen["temperature"], batch_size=gen["batch_size"],
                                  seed=gen["seed"], return_ids=True)
        own_logps[name] = _sequence_logps(model, rows, tok.pad_token_id, temperature=gen["temperature"],
                                          batch_size=gen["batch_size"])
        samples[name], tokenizers[name] = rows, (tok.get_vocab(), tok.pad_token_id)
        del model
        _free()
    return samples, own_logps, tokenizers


def _kl_to_reference(policies, reference: str, samples, own_logps, tokenizers, device,
                     gen: dict) -> dict[str, np.ndarray | None]:
    """Detail 2 above: the reference scores every other policy's sampled ids; per-sample
    sequence KL (None for a policy whose tokenizer differs). The reference's own KL is its
    log-probs minus themselves: exactly 0, not "0 up to padding-dependent rounding"."""
    from rlhfkit.modeling import load_causal_lm, load_tokenizer

    kl: dict[str, np.ndarray | None] = {reference: own_logps[reference] - own_logps[reference]}
    others = [n for n in policies if n != reference]
    if not others:
        return kl
    ref_tok = load_tokenizer(str(policies[reference]))
    ref_model = load_causal_lm(str(policies[reference]), ref_tok).to(device).eval()
    for name in others:
        if tokenizers[name][0] != tokenizers[reference][0]:
            log.warning("evaluate: %s has a different tokenizer than the reference %s; KL not computed",
                        name, reference)
            kl[name] = None
            continue
        ref_lp = _sequence_logps(ref_model, samples[name], tokenizers[reference][1],
                                 temperature=gen["temperature"], batch_size=gen["batch_size"])
        kl[name] = own_logps[name] - ref_lp
    del ref_model
    _free()
    return kl


def _reward_model_scores(reward_model, samples: dict[str, list[dict]], device, max_length: int,
                         batch_size: int) -> dict[str, np.ndarray]:
    """The proxy: the reward model's score normalised as stored."""
    from rlhfkit.scoring import RewardScorer

    scorer = RewardScorer(reward_model, max_length=max_length, device=device)
    rm = {name: scorer.score([r["prompt"] for r in rows], [r["completion"] for r in rows],
                             batch_size=batch_size)[0] for name, rows in samples.items()}
    del scorer
    _free()
    return rm


def _gold_scores(gold: str, gold_fn, samples: dict[str, list[dict]], device, max_length: int,
                 batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Detail 6 above: the gold reward of every sample (a reward-model gold is loaded here, after
    the policies and the proxy are freed), and (synthetic gold only) each policy's completion-format
    rate."""
    from rlhfkit.synthetic.grammar import follows_format

    if gold_fn is None:
        gold_fn = resolve_gold(gold, device=device, max_length=max_length, batch_size=batch_size)
    golds, fmt = {}, {}
    for name, rows in samples.items():
        golds[name] = np.asarray(gold_fn([r["prompt"] for r in rows], [r["completion"] for r in rows]))
        if gold == "synthetic":
            fmt[name] = float(np.mean([r["ended_with_eos"] and follows_format(r["completion"])
                                       for r in rows]))
    del gold_fn
    _free()
    return golds, fmt


def _vs_reference(prefix: str, mine: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    """A score's summary and its win rate against the reference's samples of the same
    prompts (``gold_*`` / ``win_rate`` for gold, ``rm_*`` / ``rm_win_rate`` for the reward model)."""
    s, w = summarize(mine), win_rate(mine, theirs)
    win = "win_rate" if prefix == "gold" else f"{prefix}_win_rate"
    out = {f"{prefix}_mean": s["mean"], f"{prefix}_std": s["std"], f"{prefix}_quantiles": s["quantiles"],
           win: w["rate"], f"{win}_se": w["se"]}
    if prefix == "gold":
        out["win_counts"] = {k: w[k] for k in ("wins", "ties", "losses")}
    return out


def _sample_stats(rows: list[dict], kl: np.ndarray | None) -> dict[str, Any]:
    """KL to the reference, length, diversity, EOS rate and the most repeated completion."""
    texts = [r["completion"] for r in rows]
    top, count = Counter(texts).most_common(1)[0]
    return {"kl": None if kl is None else float(kl.mean()),
            "kl_se": None if kl is None else float(kl.std() / math.sqrt(kl.size)),
            "length_tokens": float(np.mean([r["num_tokens"] for r in rows])),
            "length_words": float(np.mean([len(t.split()) for t in texts])),
            "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "eos_rate": float(np.mean([r["ended_with_eos"] for r in rows])),
            "top_completion": top, "top_completion_share": count / len(texts)}


def _side_by_side(prompts: list[str], num_samples: int, samples: dict[str, list[dict]],
                  golds: dict[str, np.ndarray], rm: dict[str, np.ndarray]) -> list[dict]:
    """The same first prompts for every policy, side by side."""
    display = []
    for j in range(min(DISPLAY_PROMPTS, len(prompts))):
        entry: dict[str, Any] = {"prompt": prompts[j], "completions": {}}
        for name, rows in samples.items():
            shown = []
            for i in range(j * num_samples, j * num_samples + min(DISPLAY_SAMPLES, num_samples)):
                s = {"text": rows[i]["completion"], "ended_with_eos": rows[i]["ended_with_eos"]}
                if golds:
                    s["gold"] = float(golds[name][i])
                if rm:
                    s["rm"] = float(rm[name][i])
                shown.append(s)
            entry["completions"][name] = shown
        display.append(entry)
    return display


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """The ``prompt`` column of a JSONL/JSON/CSV/Parquet file (first ``limit`` rows)."""
    from rlhfkit.data.loading import read_records

    rows = read_records(str(path))
    prompts = []
    for i, r in enumerate(rows, start=1):
        p = r.get("prompt") if isinstance(r, dict) else None
        if not isinstance(p, str):
            raise DataError("missing" if p is None else f"expected a string, got {type(p).__name__}",
                            source=str(path), row=i, field="prompt")
        prompts.append(p)
    if not prompts:
        raise DataError("no rows", source=str(path))
    return prompts[:limit] if limit else prompts


def evaluate(cfg) -> Path:
    """`rlhf evaluate`: evaluate the configured policies, write evaluation.json and report.md."""
    from rlhfkit.config import save_config
    from rlhfkit.evaluate.report import write_report
    from rlhfkit.train.common import seed_everything

    seed_everything(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    prompts = read_prompts(cfg.prompts, cfg.max_prompts)
    evaluation = evaluate_policies(cfg.policies, prompts, reference=cfg.reference,
                                   reward_model=cfg.reward_model, gold=cfg.gold, num_samples=cfg.num_samples,
                                   max_new_tokens=cfg.max_new_tokens,
                                   temperature=cfg.temperature, max_length=cfg.max_length, seed=cfg.seed,
                                   batch_size=cfg.batch_size)
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
    agreement = None
    if cfg.agreement:
        try:
            agreement = json.loads(Path(cfg.agreement).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"not a readable JSON file: {e}", source=cfg.agreement) from None
        if not isinstance(agreement, dict):
            raise DataError("expected a JSON object of statistics", source=cfg.agreement)
    return write_report(out, evaluation=evaluation, runs=cfg.runs, reward_runs=cfg.reward_runs,
                        agreement=agreement, title=cfg.title)
