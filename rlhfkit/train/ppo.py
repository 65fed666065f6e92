"""`rlhf ppo`: online RL from a reward -- PPO with a critic, or critic-free RLOO / GRPO.

Implementation details (RLHF-DETAILS items 7-21; each prevents a known failure):

1. One explicit loop per step: rollout -> score -> no-EOS penalty -> per-token KL to the frozen
   reference -> values -> GAE -> whiten -> PPO epochs -> log. The mechanics are the shared
   ones in :mod:`rlhfkit.rl` and :mod:`rlhfkit.losses`; this file only wires them.
2. Rollouts (``generate_rollout``): prompts tokenised once (one BOS; chat templates respected)
   and cut from the left to ``max_prompt_length`` / the context with a counted warning;
   sampled by ``rollout_engine`` (:mod:`rlhfkit.rl.engine`: our own KV-cache loop by default,
   ``generate`` or vLLM) with temperature 0.7 and no other processor (the checkpoint's
   generation_config.json is not applied, so samples come from exactly the distribution whose
   log-probs are trained); everything after the first EOS is padding (items 8-10). The rollout's
   log-probs, the reference's and the training forward's all divide the logits by the sampling
   temperature (item 12), so on the first minibatch of the first epoch the ratio is 1 to float
   error: logged as ``first_ratio`` / ``first_approx_kl`` / ``first_clipfrac``. RLOO/GRPO with
   one update of one minibatch and the KL in the loss take the old log-probs from that update's
   own forward instead (``reuses_update_logprobs``): same numbers, one forward fewer.
3. Reward: the weighted sum of a reward model (``RewardScorer`` applies its stored offset /
   scale, item 5) and Python functions ``module:function`` (``gold`` = the synthetic gold
   reward), scored on the truncated text; then responses without EOS get ``no_eos_penalty``
   (item 11; EOS is looked for in the response only).
4. KL: k1 per token against the frozen reference (a second copy in eval mode, no grad, dropout
   off; with LoRA the same weights with the adapter disabled, item 23). PPO puts ``-beta * k1``
   on every response token and the score on the last one (item 13). RLOO / GRPO subtract
   ``beta * sequence k1`` from the sequence reward (``kl_in: reward``) or add ``beta * k3`` to
   the loss (``kl_in: loss``, GRPO's choice; item 20). GRPO with ``kl_in: reward`` standardises
   the task score within the group *first* and subtracts ``beta * (seq k1 - group mean)`` after,
   so beta keeps control of the KL (dividing score - beta * KL by its group std made the KL term
   full-strength in every group whose task rewards tie); ``scale_rewards: none`` is Dr. GRPO.
   beta is fixed or adaptive (item 16); the
   controller is updated once per step with the batch's mean sequence KL and checkpointed.
5. Critic (PPO only, :mod:`rlhfkit.rl.critic`): a separate network,
   ``AutoModelForSequenceClassification`` initialised from the reward model (default) or from the
   policy with a small fresh head (item 17). Its per-token values are ``head(hidden_states)`` at
   every position (the reward head applied to the trunk's last hidden states), aligned with the
   log-probs: the value of position t predicts the return from token t+1 on; the reward model's
   stored offset / scale are applied to them, so initial values are on the reward's scale (item 5).
   With LoRA the critic is still a full network. With ``critic: policy_head`` the critic is instead
   a linear head (d_model -> 1, std 1/sqrt(d+1), bias 0) on the policy's last hidden states: one
   forward gives logits and values, the loss is the policy loss + ``vf_coef`` * value loss, one
   optimizer (the policy's) trains both; the head is in the run's checkpoints (resume is exact) but
   not in the final / best policy directories.
6. GAE with gamma 1, lambda 0.95; returns = A + V before whitening; advantages whitened over
   valid tokens only (item 14), with statistics summed over all processes (one all-reduce).
   RLOO / GRPO: the sequence advantage of ``rloo_advantages`` / ``grpo_advantages`` (k samples
   per prompt, contiguous) is broadcast to every response token (item 21).
7. PPO epochs: ``ppo_epochs`` passes, each a fresh permutation (seeded by seed, step, epoch)
   split into minibatches of ``mini_batch_size`` episodes, one optimizer step per minibatch for
   the policy (clipped surrogate, clip 0.2) and for the critic (clipped value loss, clip 0.2,
   ``0.5 * mean(max(sq, sq_clipped))``) (item 15). Separate AdamW optimizers (eps 1e-5) and
   linear schedules over all minibatch steps (item 18). Tokens after EOS are masked out of every
   loss and statistic. Losses are token means over the minibatch of *all* processes (each
   process divides its token sum by the global count / world, since DDP averages gradients), so
   N processes update like one process holding the whole minibatch.
8. Monitors logged every step (item 19, :mod:`rlhfkit.rl.monitors`; one all-reduce for the
   rollout's metrics and one for the update's, whatever the number of processes): mean sequence
   KL (sum over tokens of logp - ref_logp),
   approx-KL, clip fraction, entropy, response length, EOS rate, distinct-2 (distinct response
   bigrams / all response bigrams in the batch), proxy reward (raw, before the penalty), and
   with ``gold`` the gold reward and the proxy - gold gap; plus beta, losses, lr. The gold
   (:func:`rlhfkit.gold.resolve_gold`: the synthetic world's, the user's ``module:function`` or a
   held-out reward-model directory) is only monitored, never trained on; the first line of
   metrics.jsonl and summary.json name it (``gold``).
9. Alarms: ``max_kl`` warns or stops (checkpoint saved; summary.json records the alarm and the
   first step each kind fired, ``alarms_fired``), and so do ``gap_alarm_steps`` when the proxy -
   gold gap widens that many steps in a row, and ``collapse_alarm`` when batch distinct-2 or token
   entropy falls below ``collapse_threshold`` of its first-step value or one completion takes the
   batch over (mode collapse; also logged: ``top_completion_share``, ``cross_prompt_similarity``,
   ``collapse_ratio``). With
   ``keep_best`` the policy whose rollout had the best mean gold (else proxy) reward is saved to
   ``best/`` (the weights that produced that rollout, i.e. before that step's update; with
   LoRA a merged copy).
   With ``audit`` (:mod:`rlhfkit.rl.audit`) every ``audit.every`` steps the k most suspicious samples
   of the rollout (proxy, proxy - gold gap, length, low diversity) go to a feedback project as pairs
   against a reference-policy sample for the same prompt (sampled from the KL reference with the same
   settings, under a forked RNG so training draws the same numbers with or without the audit); the
   share of audit judgements preferring the policy sample (``audit_agreement``) drives
   ``audit_alarm``. When that project is the pipeline's, the judgements join the next round's
   preference data through `rlhf label export`.
10. Checkpoints hold policy, critic, both optimizers and schedules and RNG (accelerate), plus
    the KL controller and the best-point record (state.json); the data order and minibatch
    permutations are functions of (seed, step), so ``resume`` continues exactly (each process
    samples from its own torch seed, restored per process). The final
    policy is a plain Hugging Face directory (LoRA merged) plus summary.json.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rlhfkit.config import PPOConfig
from rlhfkit.distributed import global_token_normalizer, mean_across
from rlhfkit.errors import DataError
from rlhfkit.generation import prompt_ids_for
from rlhfkit.gold import describe_gold, resolve_gold
from rlhfkit.logprobs import logits_window, masked_mean, window_logprobs
from rlhfkit.losses import entropy_from_logits, ppo_policy_loss
from rlhfkit.modeling import (apply_lora, chat_renderer, load_causal_lm, load_reward_model, load_tokenizer,
                              save_hf)
from rlhfkit.rl.advantages import gae, group_advantages, per_token_rewards, whiten
from rlhfkit.rl.audit import AuditQueue, louder
from rlhfkit.rl.critic import HeadCritic, PolicyWithValueHead, SeparateCritic, ValueModel, policy_forward
from rlhfkit.rl.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k3
from rlhfkit.rl.monitors import (CollapseWatch, check_alarms, cross_prompt_similarity, distinct_2,  # noqa: F401
                                  gap_widening, top_completion_share)
from rlhfkit.rl.engine import make_engine
from rlhfkit.rl.rollout import forward_logprobs, generate_rollout, score_rollout
from rlhfkit.train.common import (RunState, batch_indices, clip_and_step, make_optimizer,
                                  make_scheduler, progress, start_run, total_steps, write_json)
from rlhfkit.train.data import load_split

log = logging.getLogger(__name__)


def reward_function(cfg: PPOConfig, device):
    """The weighted sum of all reward sources as one ``(prompts, completions) -> list`` function."""
    sources = []
    if cfg.reward_model:
        from rlhfkit.scoring import RewardScorer

        scorer = RewardScorer(cfg.reward_model, max_length=cfg.max_length, device=device)
        sources.append(lambda p, c: scorer.score(p, c)[0].tolist())
    for spec in cfg.reward_functions:
        module, name = ("rlhfkit.synthetic.gold", "gold_reward_fn") if spec == "gold" else spec.split(":")
        sources.append(getattr(importlib.import_module(module), name))
    weights = cfg.reward_weights or [1.0] * len(sources)

    def combined(prompts: list[str], completions: list[str]) -> list[float]:
        total = [0.0] * len(completions)
        for w, fn in zip(weights, sources):
            total = [t + w * float(s) for t, s in zip(total, fn(prompts, completions))]
        return total

    return combined


def reuses_update_logprobs(cfg: PPOConfig, n_minibatches: int) -> bool:
    """Item 12 shortcut. With one update over one minibatch of the whole rollout and the KL as a
    loss term (TRL's GRPO default), that update's own forward *is* the sampling policy's: its
    detached log-probs serve as the old log-probs (ratio exactly 1) and as the k1 sequence KL, so
    the rollout's separate policy forward (~10% of a GRPO step, bench/rl_vs_trl.py) is skipped.
    PPO needs them before the update (per-token KL reward, values, GAE) and several epochs or
    minibatches need them fixed, so those keep the rollout forward."""
    return cfg.estimator != "ppo" and cfg.kl_in == "loss" and cfg.ppo_epochs == 1 and n_minibatches == 1


def _models(cfg: PPOConfig, acc, tok, policy, n_optimizer_steps: int):
    """Reference, critic and optimisation around the loaded policy (details 4, 5, 7 above): returns the
    prepared policy (with its value head for ``critic: policy_head``), its optimizer and schedule,
    the causal LM alone (``net``: sampling, LoRA reference, saving), the frozen reference (None
    with LoRA) and the critic (None for RLOO / GRPO)."""
    ref = None
    if cfg.lora_r:
        policy = apply_lora(policy, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            target_modules=cfg.lora_target_modules)
    else:  # detail 4 above (item 23): a frozen copy, eval mode, no grad, dropout off
        ref = load_causal_lm(cfg.ref_model or cfg.model, tok, dtype=cfg.dtype, disable_dropout=True)
        ref.eval().requires_grad_(False).to(acc.device)
    head = cfg.estimator == "ppo" and cfg.critic == "policy_head"
    if head:
        policy = PolicyWithValueHead(policy)
    optimizer = make_optimizer(policy, cfg)
    scheduler = make_scheduler(optimizer, cfg, n_optimizer_steps)
    policy, optimizer, scheduler = acc.prepare(policy, optimizer, scheduler)
    critic = HeadCritic(cfg.vf_coef) if head else None
    if cfg.estimator == "ppo" and not head:
        vcfg = cfg.model_copy(update={"learning_rate": cfg.value_learning_rate or cfg.learning_rate})
        source = cfg.value_model or cfg.reward_model or cfg.model
        value = ValueModel(load_reward_model(source, tok, dtype=cfg.dtype))
        v_opt = make_optimizer(value, vcfg)
        v_sched = make_scheduler(v_opt, vcfg, n_optimizer_steps)
        critic = SeparateCritic(*acc.prepare(value, v_opt, v_sched))
    net = acc.unwrap_model(policy)
    return policy, optimizer, scheduler, net.policy if head else net, ref, critic


@torch.no_grad()
def _ref_logprobs(cfg: PPOConfig, acc, ref, net, ro) -> torch.Tensor:
    """(B, T-1) reference log-probs of the rollout's response tokens: the frozen copy, or with LoRA
    the adapter-off policy (item 23). Under the policy's autocast (the frozen copy is not prepared,
    so nothing else would apply it): an fp32 reference against a bf16-autocast policy reads their
    rounding difference as KL (0.0007 nats a sequence before any update on the test model)."""
    args = (ro.input_ids, ro.attention_mask, ro.position_ids, ro.response_mask)
    kw = {"temperature": cfg.temperature, "prompt_width": ro.prompt_width}
    if ref is not None:
        with acc.autocast():
            return forward_logprobs(ref, *args, **kw)
    net.eval()
    with net.disable_adapter(), acc.autocast():
        lp = forward_logprobs(net, *args, **kw)
    net.train()
    return lp


def _engine(cfg: PPOConfig, acc):
    """The rollout engine (detail 2 above); vLLM starts from the policy's directory and gets the
    trained weights before every rollout."""
    if cfg.rollout_engine == "vllm":
        return make_engine("vllm", model_path=cfg.model, dtype=cfg.dtype, seed=cfg.seed + acc.process_index,
                           gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                           processes=acc.num_processes)
    return make_engine(cfg.rollout_engine)


def _sample(cfg: PPOConfig, acc, net, tok, prompts: list[str], ids: list[list[int]], num: int,
            logprobs: bool = True, engine=None):
    # Sampling and the rollout log-probs under the autocast of the training forward (item 12:
    # first ratio 1). accelerate patches only the forward of the module it prepared: with
    # `critic: policy_head` that is the wrapper, and `net` inside it would run fp32 (first ratio
    # 0.998 with mixed_precision bf16 on the test model).
    with acc.autocast():
        ro = generate_rollout(net, tok, prompts, num_samples=num, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, prompt_ids=ids, compute_logprobs=logprobs,
                              engine=engine)
    for f in ("input_ids", "attention_mask", "position_ids", "response_mask", "logprobs"):
        setattr(ro, f, getattr(ro, f).to(acc.device))
    return ro


def _mean(values) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)


@torch.no_grad()
def _advantages(cfg: PPOConfig, policy, critic, ro, score, kl, seq_kl, mask, beta: float, global_sum):
    """Items 13, 14, 21: (advantages (B, T-1), values, returns) -- the last two None without a critic."""
    if critic is None:  # RLOO / GRPO: one sequence advantage, broadcast to every response token
        a = group_advantages(cfg.estimator, score, seq_kl, beta if cfg.kl_in == "reward" else 0.0,
                             cfg.samples_per_prompt, scale=cfg.scale_rewards == "group")
        return a.unsqueeze(1) * mask, None, None
    values = critic.values(policy, ro) * mask  # (B, T-1)
    adv, returns = gae(per_token_rewards(score, kl, mask, beta), values, mask, gamma=cfg.gamma, lam=cfg.lam)
    if cfg.whiten_advantages:
        adv = whiten(adv, mask, sum_across=global_sum)
    return adv, values, returns


def _update(cfg: PPOConfig, acc, run, step: int, policy, optimizer, scheduler, critic, ro, adv, values,
            returns, old_lp, ref_lp, mask, beta: float,
            reuse_lp: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Items 7, 12, 15, 20: ``ppo_epochs`` passes of shuffled minibatches, one policy (and critic)
    step each. Returns this process's mean of every update metric and the first minibatch's ratio,
    approx-KL and clip fraction (which must be 1, 0, 0)."""
    sums: dict[str, float] = {}
    n_updates, first = 0, {}
    for epoch in range(cfg.ppo_epochs):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + epoch)
        for mb_i, mb in enumerate(torch.randperm(len(adv), generator=g).split(cfg.mini_batch_size)):
            mb = mb.to(acc.device)
            ids, mb_mask = ro.input_ids[mb], mask[mb]
            # Global token mean: DDP averages gradients over processes, so each process divides
            # its token sum by (all processes' tokens / world), not by its own count.
            n_tok = global_token_normalizer(acc, mb_mask)
            # logits from the last prompt column on (b, T - start, V), like the rollout's forward
            kw, start = logits_window(policy, ro.prompt_width - 1, ids.shape[1])
            with acc.autocast():  # the rollout's autocast (item 12); the log-softmax below is fp32
                logits, v = policy_forward(policy, ids, ro.attention_mask[mb], ro.position_ids[mb], **kw)
            lp = window_logprobs(logits, ids, start, cfg.temperature)  # (b, T-1)
            if reuse_lp:  # the only update: its forward is the sampling policy's
                old_lp[mb] = lp.detach() * mb_mask
            loss, pm = ppo_policy_loss(lp, old_lp[mb], adv[mb], mb_mask, clip=cfg.cliprange, num_tokens=n_tok)
            if cfg.kl_in == "loss":
                kl_loss = (kl_k3(lp, ref_lp[mb]) * mb_mask).sum() / n_tok
                loss = loss + beta * kl_loss
                pm["kl_loss"] = kl_loss.item()
            with torch.no_grad():
                entropy = entropy_from_logits(logits[:, :-1], cfg.temperature)  # (b, T-1-start)
                entropy = F.pad(entropy, (start, 0))  # (b, T-1)
                pm["entropy"] = masked_mean(entropy, mb_mask).item()
            pm["pg_loss"] = loss.item()
            if critic is not None:
                v_term, vm = critic.joint_loss(v, values[mb], returns[mb], mb_mask, clip=cfg.cliprange_value,
                                               num_tokens=n_tok)
                if v_term is not None:
                    loss = loss + v_term
                pm.update(vm)
            acc.backward(loss)
            if clip_and_step(acc, policy, optimizer, scheduler, cfg.max_grad_norm) is None:
                run.nonfinite(step + 1, pm["pg_loss"])
            if critic is not None:
                pm.update(critic.step(acc, run, step + 1, ro, mb, values[mb], returns[mb], mb_mask,
                                      clip=cfg.cliprange_value, num_tokens=n_tok,
                                      max_grad_norm=cfg.max_grad_norm))
            if epoch == 0 and mb_i == 0:  # item 12: must be ratio 1, approx_kl 0, clipfrac 0
                first = {f"first_{key}": pm[key] for key in ("ratio", "approx_kl", "clipfrac")}
            for key, val in pm.items():
                sums[key] = sums.get(key, 0.0) + val
            n_updates += 1
    return {key: v / n_updates for key, v in sums.items()}, first


def _rollout_metrics(ro, proxy, score, seq_kl, gold, k: int) -> dict[str, float]:
    """This process's means over its rollout (detail 8 above): rewards, length, EOS rate, the
    diversity monitors, the sequence KL (None while the update still has to produce it) and gold."""
    local = {"proxy_reward": _mean(proxy.tolist()), "score": _mean(score.tolist()),
             "response_length": _mean(ro.response_lengths.float().tolist()),
             "eos_rate": _mean(ro.ended_with_eos.float().tolist()), "distinct_2": distinct_2(ro.response_ids),
             "top_completion_share": top_completion_share(ro.response_ids),
             "cross_prompt_similarity": cross_prompt_similarity(ro.response_ids[:64], k)}
    if seq_kl is not None:
        local["seq_kl"] = _mean(seq_kl.tolist())
    if "engine_logprob_gap" in ro.meta:  # float noise unless the engine sampled another distribution
        local["engine_logprob_gap"] = ro.meta["engine_logprob_gap"]
    if gold is not None:
        local["gold_reward"] = _mean(gold)
    return local


@torch.no_grad()
def _reference_texts(cfg: PPOConfig, acc, ref, net, tok, ro, step: int, rows: list[int]) -> list[str]:
    """The reference policy's answer to the prompt of each of ``rows`` (the audit's comparison),
    with the rollout's generation settings; under a forked, seeded RNG so the training stream of
    random numbers (and so resume) does not depend on whether the audit ran."""
    prompts, ids = [ro.prompts[i] for i in rows], [ro.query_ids[i] for i in rows]
    kw = dict(num_samples=1, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, prompt_ids=ids,
              compute_logprobs=False)
    with torch.random.fork_rng(devices=[acc.device] if acc.device.type == "cuda" else []):
        torch.manual_seed(cfg.seed * 1_000_003 + 104_729 * step + acc.process_index)
        with acc.autocast():  # the rollout's precision
            if ref is not None:
                return generate_rollout(ref, tok, prompts, **kw).texts
            with net.disable_adapter():  # LoRA: the reference is the adapter-off policy (item 23)
                return generate_rollout(net, tok, prompts, **kw).texts


def _prompts(cfg: PPOConfig, tok, policy):
    """Training and evaluation prompts as text and as ids (detail 2 above: tokenised once, one BOS,
    chat templates respected, cut from the left to fit), and the data report."""
    rows, eval_rows, data_report = load_split(cfg, "prompt", render_chat=chat_renderer(tok))
    prompts = [r["prompt"] for r in rows]
    eval_prompts = [r["prompt"] for r in eval_rows][:cfg.eval_prompts]
    if not prompts:
        raise DataError("no prompts to train on", source=cfg.data)
    fit = dict(max_new_tokens=cfg.max_new_tokens, max_prompt_length=cfg.max_prompt_length)
    prompt_ids = prompt_ids_for(policy, tok, prompts, **fit, what="training prompts")
    eval_ids = prompt_ids_for(policy, tok, eval_prompts, **fit, what="evaluation prompts")
    return prompts, prompt_ids, eval_prompts, eval_ids, data_report


def train(cfg: PPOConfig) -> Path:
    acc, run_dir = start_run(cfg)
    tok = load_tokenizer(cfg.tokenizer or cfg.model)
    k, world, rank = cfg.samples_per_prompt, acc.num_processes, acc.process_index
    global_sum = (lambda t: acc.reduce(t, reduction="sum")) if world > 1 else None  # noqa: E731
    policy = load_causal_lm(cfg.model, tok, dtype=cfg.dtype, disable_dropout=cfg.disable_dropout)
    prompts, prompt_ids, eval_prompts, eval_ids, data_report = _prompts(cfg, tok, policy)
    reward_fn = reward_function(cfg, acc.device)
    gold_fn = resolve_gold(cfg.gold, device=acc.device, max_length=cfg.max_length)  # monitored only
    gold_name = describe_gold(cfg.gold)

    global_batch = cfg.prompts_per_device * world
    n_steps = total_steps(cfg, len(prompts), global_batch, source=cfg.data)
    n_mb = math.ceil(cfg.prompts_per_device * k / cfg.mini_batch_size)
    n_updates = n_steps * cfg.ppo_epochs * n_mb
    policy, optimizer, scheduler, net, ref, critic = _models(cfg, acc, tok, policy, n_updates)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
              else FixedKLController(cfg.kl_coef))
    if world > 1:  # decorrelate the processes' sampling (restored per process on resume)
        torch.manual_seed(cfg.seed * 1_000_003 + 7919 * (rank + 1))
    run = RunState(cfg, acc, run_dir)
    start, best, gaps, fired = run.start, {"value": None, "step": None}, [], {}
    collapse = CollapseWatch(cfg.collapse_threshold)
    audit = AuditQueue(cfg.audit, seed=cfg.seed) if cfg.audit else None
    audit_settings = {"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens,
                      "run": str(run_dir)}
    if start:
        state = json.loads((run.ckpts.latest() / "state.json").read_text())
        kl_ctl.load_state_dict(state["kl_ctl"])
        best, gaps, fired = state["best"], state.get("gaps", []), state.get("alarms_fired", {})
        collapse.baseline = state.get("collapse_baseline")
        if audit is not None:
            audit.rounds = state.get("audit_rounds", [])
    reuse_lp = reuses_update_logprobs(cfg, n_mb)
    engine = _engine(cfg, acc)

    def evaluate() -> dict[str, float]:
        mine = eval_prompts[rank::world]
        if not mine:
            return {}
        with torch.random.fork_rng(devices=[acc.device] if acc.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed + 1000 + rank)  # the same samples at every evaluation point
            ro = _sample(cfg, acc, net, tok, mine, eval_ids[rank::world], cfg.eval_num_samples, engine=engine)
        seq_kl = (kl_k1(ro.logprobs, _ref_logprobs(cfg, acc, ref, net, ro)) * ro.token_mask).sum(-1)
        local = {"eval_proxy": _mean(reward_fn(ro.prompts, ro.texts)), "eval_seq_kl": _mean(seq_kl.tolist())}
        if gold_fn:
            local["eval_gold"] = _mean(gold_fn(ro.prompts, ro.texts))
        return mean_across(acc, local)

    initial_eval = run.initial_eval(evaluate, {"gold": gold_name} if gold_name else None)
    alarm, t0, eps_seen = None, time.time(), 0
    bar = progress(n_steps, start, acc, cfg.estimator)
    policy.train()
    for step in range(start, n_steps):
        # 1. sample this process's share of the step's prompts
        idx = batch_indices(step, n_examples=len(prompts), global_batch=global_batch, seed=cfg.seed)
        mine = idx[rank * cfg.prompts_per_device:(rank + 1) * cfg.prompts_per_device]
        ro = _sample(cfg, acc, net, tok, [prompts[i] for i in mine], [prompt_ids[i] for i in mine], k,
                     logprobs=not reuse_lp, engine=engine)
        mask = ro.token_mask.float()  # (B, T-1)
        # 2. score, and the KL to the reference
        proxy, score = score_rollout(ro, reward_fn, no_eos_penalty=cfg.no_eos_penalty,
                                     penalty_mode=cfg.no_eos_penalty_mode)
        score = score.to(acc.device)
        old_lp, ref_lp = ro.logprobs, _ref_logprobs(cfg, acc, ref, net, ro)
        kl = kl_k1(old_lp, ref_lp) * mask  # (B, T-1); zeros until the update fills old_lp if reuse_lp
        seq_kl, beta = kl.sum(-1), kl_ctl.value
        gold = [float(g) for g in gold_fn(ro.prompts, ro.texts)] if gold_fn else None
        local = _rollout_metrics(ro, proxy, score, None if reuse_lp else seq_kl, gold, k)
        m = {"kl_coef": beta, **mean_across(acc, local)}
        if gold_fn:
            m["proxy_gold_gap"] = m["proxy_reward"] - m["gold_reward"]
            gaps.append(m["proxy_gold_gap"])
        if audit is not None and audit.due(step + 1):  # detail 9 above: the audit queue
            m.update(audit.round(acc, step + 1, ro, proxy.tolist(), gold,
                                 functools.partial(_reference_texts, cfg, acc, ref, net, tok, ro, step + 1),
                                 audit_settings))
        # Detail 9 above (item 27): keep the weights that produced the best rollout (before this update).
        watched = m.get("gold_reward", m["proxy_reward"])
        if cfg.keep_best and (best["value"] is None or watched > best["value"]):
            best = {"value": watched, "step": step}
            if acc.is_main_process:  # save_hf merges LoRA in place: merge a copy, keep training the adapter
                save_hf(copy.deepcopy(net) if cfg.lora_r else net, tok, run_dir / "best")
        # 3. advantages, 4. update
        adv, values, returns = _advantages(cfg, policy, critic, ro, score, kl, seq_kl, mask, beta, global_sum)
        update, first = _update(cfg, acc, run, step, policy, optimizer, scheduler, critic, ro, adv, values,
                                returns, old_lp, ref_lp, mask, beta, reuse_lp)
        if reuse_lp:  # the sequence KL needed the log-probs the update just produced
            update["seq_kl"] = _mean(((kl_k1(old_lp, ref_lp) * mask).sum(-1)).tolist())
        m.update(mean_across(acc, {**update, **first}), lr=scheduler.get_last_lr()[0])
        # 5. KL control, alarms, log, checkpoint
        kl_ctl.update(m["seq_kl"], len(score) * world)
        eps_seen += len(score) * world
        done = step + 1
        raised = check_alarms(cfg, m, gaps, done, collapse)
        if audit is not None:
            raised = louder(raised, audit.alarm(m, done, cfg.audit_alarm, cfg.audit_threshold))
        alarm = raised or alarm
        fired.update({kind: done for kind in ("kl", "gap", "collapse", "audit")
                      if m.get(f"alarm_{kind}") and kind not in fired})
        state = {"kl_ctl": kl_ctl.state_dict(), "best": best, "gaps": gaps, "alarms_fired": fired,
                 "collapse_baseline": collapse.baseline, "audit_rounds": audit.rounds if audit else []}
        if alarm and alarm["action"] == "stop":
            bar.update(1)
            run.log_step(done, done, m, evaluate)  # the stopping step is always logged (and evaluated)
            run.ckpts.save(done, state)
            break
        if audit is not None and audit.due(done) and done % cfg.log_every and done != n_steps:
            # An audit round's figures are logged even off the log_every grid (end_step would drop them).
            run.metrics.log(done, {key: v for key, v in m.items() if "audit" in key})
        shown = {"kl": f"{m['seq_kl']:.3f}", "r": f"{m['proxy_reward']:.3f}"}
        if run.end_step(bar, done, n_steps, m, evaluate, state, shown):
            return run.latest_dir

    stopped = bool(alarm and alarm["action"] == "stop")
    final = run_dir / "final"
    summary = {
        "stage": "ppo", "estimator": cfg.estimator, "samples_per_prompt": k, "steps": n_steps,
        "steps_done": done if n_steps > start else start, "processes": world, "prompts": len(prompts),
        "data": data_report, "reference": "adapter disabled" if cfg.lora_r else "frozen copy",
        "critic": (("policy_head" if isinstance(critic, HeadCritic) else
                    (cfg.value_model or cfg.reward_model or cfg.model)) if critic is not None else None),
        "gold": gold_name, "final_kl_coef": kl_ctl.value, "alarm": alarm, "alarms_fired": fired,
        "stopped_by_alarm": stopped,
        "best": {**best, "dir": str(run_dir / "best") if best["step"] is not None else None,
                 "metric": "gold_reward" if gold_fn else "proxy_reward"},
        "audit": audit.summary(acc) if audit is not None else None,
        **{f"initial_{key}": v for key, v in initial_eval.items()},
        **{f"final_{key}": v for key, v in run.last_eval.items()},
        "episodes_per_second": eps_seen / max(time.time() - t0, 1e-9), "model_dir": str(final),
    }

    def save(final: Path) -> None:
        save_hf(net, tok, final)
        write_json(run_dir / "summary.json", summary)

    final_state = None if stopped else {"final": True, "kl_ctl": kl_ctl.state_dict(), "best": best,
                                        "gaps": gaps, "alarms_fired": fired,
                                        "collapse_baseline": collapse.baseline,
                                        "audit_rounds": audit.rounds if audit else []}
    return run.finish(bar, n_steps, final_state, save)
