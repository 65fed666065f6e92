"""`rlhf ppo`: online RL from a reward -- PPO with a critic, or critic-free RLOO / GRPO.

Implementation details (RLHF-DETAILS items 7-21; each prevents a known failure):

1. One explicit loop per step: rollout -> score -> no-EOS penalty -> per-token KL to the frozen
   reference -> values -> GAE -> whiten -> PPO epochs -> log. The mechanics are the shared
   ones in :mod:`rlhfkit.rl` and :mod:`rlhfkit.losses`; this file only wires them.
2. Rollouts (``generate_rollout``): prompts tokenised once (one BOS; chat templates respected)
   and cut from the left to ``max_prompt_length`` / the context with a counted warning;
   left-padded, KV cache, temperature 0.7 and no other processor (the checkpoint's
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
   full-strength in every group whose task rewards tie); ``scale_rewards: none`` is Dr. GRPO. beta is fixed or adaptive (item 16); the
   controller is updated once per step with the batch's mean sequence KL and checkpointed.
5. Critic (PPO only): a separate network, ``AutoModelForSequenceClassification`` initialised
   from the reward model (default) or from the policy with a small fresh head (item 17). Its
   per-token values are ``head(hidden_states)`` at every position (the reward head applied to
   the trunk's last hidden states), aligned with the log-probs: the value of position t
   predicts the return from token t+1 on; the reward model's stored offset / scale are applied
   to them, so initial values are on the reward's scale (item 5). With LoRA the critic is
   still a full network. With ``critic: policy_head`` the critic is instead a linear head
   (d_model -> 1, std 1/sqrt(d+1), bias 0) on the policy's last hidden states: one forward
   gives logits and values, the loss is the policy loss + ``vf_coef`` * value loss, one
   optimizer (the policy's) trains both; the head is in the run's checkpoints (resume is
   exact) but not in the final / best policy directories.
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
8. Monitors logged every step (item 19): mean sequence KL (sum over tokens of logp - ref_logp),
   approx-KL, clip fraction, entropy, response length, EOS rate, distinct-2 (distinct response
   bigrams / all response bigrams in the batch), proxy reward (raw, before the penalty), and
   with ``gold_reward`` the gold reward and the proxy - gold gap; plus beta, losses, lr.
9. Alarms: ``max_kl`` warns or stops (checkpoint saved; summary.json records the alarm), and so
   does ``gap_alarm_steps`` when the proxy - gold gap widens that many steps in a row. With
   ``keep_best`` the policy whose rollout had the best mean gold (else proxy) reward is saved to
   ``best/`` (the weights that produced that rollout, i.e. before that step's update; with
   LoRA a merged copy).
10. Checkpoints hold policy, critic, both optimizers and schedules and RNG (accelerate), plus
    the KL controller and the best-point record (state.json); the data order and minibatch
    permutations are functions of (seed, step), so ``resume`` continues exactly (each process
    samples from its own torch seed, restored per process). The final
    policy is a plain Hugging Face directory (LoRA merged) plus summary.json.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import math
import time
from pathlib import Path

import torch
from torch import nn

from rlhfkit.config import PPOConfig
from rlhfkit.errors import DataError
from rlhfkit.logprobs import masked_mean, token_logprobs
from rlhfkit.losses import entropy_from_logits, ppo_policy_loss, ppo_value_loss
from rlhfkit.modeling import (
    REWARD_OFFSET,
    REWARD_SCALE,
    apply_lora,
    chat_renderer,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    reward_head,
    save_hf,
)
from rlhfkit.generation import prompt_ids_for
from rlhfkit.rl.advantages import gae, group_advantages, per_token_rewards, whiten
from rlhfkit.rl.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k3
from rlhfkit.rl.rollout import forward_logprobs, generate_rollout, score_rollout
from rlhfkit.train.common import (
    RunState,
    batch_indices,
    clip_and_step,
    global_token_normalizer,
    make_optimizer,
    make_scheduler,
    progress,
    start_run,
    total_steps,
    write_json,
)
from rlhfkit.train.data import load_split

log = logging.getLogger(__name__)


class ValueModel(nn.Module):
    """Per-token values from a sequence-classification model: its scalar head on every position
    of the trunk's last hidden states (item 17)."""

    def __init__(self, seq_cls_model):
        super().__init__()
        self.net = seq_cls_model  # the head is looked up, not stored twice (shared tensors)
        # Item 5: a reward model's stored normalisation, so the initial values are on the
        # scale of the rewards they predict (identity for a fresh head).
        self.register_buffer("offset", torch.tensor(float(getattr(seq_cls_model.config, REWARD_OFFSET, 0.0))))
        self.register_buffer("scale", torch.tensor(float(getattr(seq_cls_model.config, REWARD_SCALE, 1.0))))

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        trunk = getattr(self.net, self.net.base_model_prefix)
        h = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False).last_hidden_state
        v = (reward_head(self.net)(h).squeeze(-1).float() - self.offset) / self.scale
        return v[:, :-1]  # (B, T-1), aligned with token log-probs


class PolicyWithValueHead(nn.Module):
    """The policy plus a scalar value head on its last hidden states (``critic: policy_head``)."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        d = policy.config.hidden_size
        self.v_head = nn.Linear(d, 1)
        nn.init.normal_(self.v_head.weight, std=1 / math.sqrt(d + 1))
        nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids, attention_mask, position_ids):
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=True, use_cache=False)
        h = out.hidden_states[-1]
        v = self.v_head(h.to(self.v_head.weight.dtype)).squeeze(-1).float()
        return out.logits, v[:, :-1]  # values aligned with token log-probs


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


def distinct_2(responses: list[list[int]]) -> float:
    grams = [tuple(r[i:i + 2]) for r in responses for i in range(len(r) - 1)]
    return len(set(grams)) / max(len(grams), 1)


def gap_widening(gaps: list[float], n: int) -> bool:
    """True when the last ``n`` steps each widened the proxy - gold gap (n = 0: never)."""
    return bool(n) and len(gaps) > n and all(gaps[-i] > gaps[-i - 1] for i in range(1, n + 1))


def reuses_update_logprobs(cfg: PPOConfig, n_minibatches: int) -> bool:
    """Item 12 shortcut. With one update over one minibatch of the whole rollout and the KL as a
    loss term (TRL's GRPO default), that update's own forward *is* the sampling policy's: its
    detached log-probs serve as the old log-probs (ratio exactly 1) and as the k1 sequence KL, so
    the rollout's separate policy forward (~10% of a GRPO step, bench/rl_vs_trl.py) is skipped.
    PPO needs them before the update (per-token KL reward, values, GAE) and several epochs or
    minibatches need them fixed, so those keep the rollout forward."""
    return cfg.estimator != "ppo" and cfg.kl_in == "loss" and cfg.ppo_epochs == 1 and n_minibatches == 1


def train(cfg: PPOConfig) -> Path:
    acc, run_dir = start_run(cfg)
    tok = load_tokenizer(cfg.tokenizer or cfg.model)
    rows, eval_rows, data_report = load_split(cfg, "prompt", render_chat=chat_renderer(tok))
    prompts = [r["prompt"] for r in rows]
    eval_prompts = [r["prompt"] for r in eval_rows][:cfg.eval_prompts]
    if not prompts:
        raise DataError("no prompts to train on", source=cfg.data)
    k, ppo = cfg.samples_per_prompt, cfg.estimator == "ppo"
    world, rank = acc.num_processes, acc.process_index
    global_sum = (lambda t: acc.reduce(t, reduction="sum")) if world > 1 else None  # noqa: E731

    policy = load_causal_lm(cfg.model, tok, dtype=cfg.dtype, disable_dropout=cfg.disable_dropout)
    # Item 2: prompts tokenised once (one BOS, chat templates respected) and cut to fit.
    prompt_ids = prompt_ids_for(policy, tok, prompts, max_new_tokens=cfg.max_new_tokens,
                                max_prompt_length=cfg.max_prompt_length, what="training prompts")
    eval_ids = prompt_ids_for(policy, tok, eval_prompts, max_new_tokens=cfg.max_new_tokens,
                              max_prompt_length=cfg.max_prompt_length, what="evaluation prompts")
    ref = None
    if cfg.lora_r:
        policy = apply_lora(policy, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            target_modules=cfg.lora_target_modules)
    else:  # item 4: a frozen copy, eval mode, no grad, dropout off
        ref = load_causal_lm(cfg.ref_model or cfg.model, tok, dtype=cfg.dtype, disable_dropout=True)
        ref.eval().requires_grad_(False).to(acc.device)
    reward_fn = reward_function(cfg, acc.device)
    gold_fn = None
    if cfg.gold_reward:
        from rlhfkit.synthetic.gold import gold_reward_fn as gold_fn

    global_batch = cfg.per_device_batch_size * world
    n_steps = total_steps(cfg, len(prompts), global_batch, source=cfg.data)
    episodes = cfg.per_device_batch_size * k
    n_mb = math.ceil(episodes / cfg.mini_batch_size)
    head = ppo and cfg.critic == "policy_head"
    if head:
        policy = PolicyWithValueHead(policy)
    optimizer = make_optimizer(policy, cfg)
    scheduler = make_scheduler(optimizer, cfg, n_steps * cfg.ppo_epochs * n_mb)
    policy, optimizer, scheduler = acc.prepare(policy, optimizer, scheduler)
    critic = v_opt = v_sched = None
    if ppo and not head:
        vcfg = cfg.model_copy(update={"learning_rate": cfg.value_learning_rate or cfg.learning_rate})
        critic = ValueModel(load_reward_model(cfg.value_model or cfg.reward_model or cfg.model, tok, dtype=cfg.dtype))
        v_opt = make_optimizer(critic, vcfg)
        v_sched = make_scheduler(v_opt, vcfg, n_steps * cfg.ppo_epochs * n_mb)
        critic, v_opt, v_sched = acc.prepare(critic, v_opt, v_sched)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
              else FixedKLController(cfg.kl_coef))

    if world > 1:  # decorrelate the processes' sampling (restored per process on resume)
        torch.manual_seed(cfg.seed * 1_000_003 + 7919 * (rank + 1))
    run = RunState(cfg, acc, run_dir)
    start, best, gaps = run.start, {"value": None, "step": None}, []
    if start:
        state = json.loads((run.ckpts.latest() / "state.json").read_text())
        kl_ctl.load_state_dict(state["kl_ctl"])
        best = state["best"]
        gaps = state.get("gaps", [])
    net = acc.unwrap_model(policy)
    if head:
        net = net.policy  # the causal LM alone: sampling, reference (LoRA), saving

    @torch.no_grad()
    def ref_logprobs(ro) -> torch.Tensor:
        args = (ro.input_ids, ro.attention_mask, ro.position_ids, ro.response_mask)
        if ref is not None:
            return forward_logprobs(ref, *args, temperature=cfg.temperature)
        net.eval()
        with net.disable_adapter():  # LoRA: the reference is the adapter-off policy
            lp = forward_logprobs(net, *args, temperature=cfg.temperature)
        net.train()
        return lp

    reuse_lp = reuses_update_logprobs(cfg, n_mb)

    def sample(prompt_list: list[str], ids: list[list[int]], num: int, logprobs: bool = True):
        ro = generate_rollout(net, tok, prompt_list, num_samples=num, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, prompt_ids=ids, compute_logprobs=logprobs)
        for f in ("input_ids", "attention_mask", "position_ids", "response_mask", "logprobs"):
            setattr(ro, f, getattr(ro, f).to(acc.device))
        return ro

    def evaluate() -> dict[str, float]:
        mine = eval_prompts[rank::world]
        if not mine:
            return {}
        with torch.random.fork_rng(devices=[acc.device] if acc.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed + 1000 + rank)  # the same samples at every evaluation point
            ro = sample(mine, eval_ids[rank::world], cfg.eval_num_samples)
        out = {"eval_proxy": _mean(acc, reward_fn(ro.prompts, ro.texts)),
               "eval_seq_kl": _mean(acc, (kl_k1(ro.logprobs, ref_logprobs(ro)) * ro.token_mask).sum(-1).tolist())}
        if gold_fn:
            out["eval_gold"] = _mean(acc, gold_fn(ro.prompts, ro.texts))
        return out

    initial_eval = run.initial_eval(evaluate)
    last_eval, alarm, t0, eps_seen = initial_eval, None, time.time(), 0
    bar = progress(n_steps, start, acc, cfg.estimator)
    policy.train()
    for step in range(start, n_steps):
        idx = batch_indices(step, n_examples=len(prompts), global_batch=global_batch, seed=cfg.seed)
        mine = idx[rank * cfg.per_device_batch_size:(rank + 1) * cfg.per_device_batch_size]
        ro = sample([prompts[i] for i in mine], [prompt_ids[i] for i in mine], k, logprobs=not reuse_lp)
        mask = ro.token_mask.float()  # (B, T-1)
        proxy, score = score_rollout(ro, reward_fn, no_eos_penalty=cfg.no_eos_penalty,
                                     penalty_mode=cfg.no_eos_penalty_mode)
        score = score.to(acc.device)
        old_lp, ref_lp = ro.logprobs, ref_logprobs(ro)
        kl = kl_k1(old_lp, ref_lp) * mask  # (B, T-1); zeros until the update fills old_lp if reuse_lp
        seq_kl = kl.sum(-1)  # (B,)
        beta = kl_ctl.value
        m = {"proxy_reward": _mean(acc, proxy.tolist()), "score": _mean(acc, score.tolist()),
             "seq_kl": None if reuse_lp else _mean(acc, seq_kl.tolist()), "kl_coef": beta,
             "response_length": _mean(acc, ro.response_lengths.float().tolist()),
             "eos_rate": _mean(acc, ro.ended_with_eos.float().tolist()),
             "distinct_2": _mean(acc, [distinct_2(ro.response_ids)])}
        if gold_fn:
            m["gold_reward"] = _mean(acc, gold_fn(ro.prompts, ro.texts))
            m["proxy_gold_gap"] = m["proxy_reward"] - m["gold_reward"]
            gaps.append(m["proxy_gold_gap"])
        # Item 9: keep the weights that produced the best rollout (before this step's update).
        watched = m.get("gold_reward", m["proxy_reward"])
        if cfg.keep_best and (best["value"] is None or watched > best["value"]):
            best = {"value": watched, "step": step}
            if acc.is_main_process:  # save_hf merges LoRA in place: merge a copy, keep training the adapter
                save_hf(copy.deepcopy(net) if cfg.lora_r else net, tok, run_dir / "best")

        with torch.no_grad():
            if ppo:
                if head:
                    values = policy(ro.input_ids, ro.attention_mask, ro.position_ids)[1] * mask
                else:
                    values = critic(ro.input_ids, ro.attention_mask, ro.position_ids) * mask  # (B, T-1)
                rewards = per_token_rewards(score, kl, mask, beta)
                adv, returns = gae(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)
                if cfg.whiten_advantages:
                    adv = whiten(adv, mask, sum_across=global_sum)
            else:
                a = group_advantages(cfg.estimator, score, seq_kl, beta if cfg.kl_in == "reward" else 0.0, k,
                                     scale=cfg.scale_rewards == "group")
                adv = a.unsqueeze(1) * mask

        sums: dict[str, float] = {}
        n_updates, first = 0, {}
        for epoch in range(cfg.ppo_epochs):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + epoch)
            for mb_i, mb in enumerate(torch.randperm(len(score), generator=g).split(cfg.mini_batch_size)):
                mb = mb.to(acc.device)
                ids, mb_mask = ro.input_ids[mb], mask[mb]
                # Global token mean: DDP averages gradients over processes, so each process
                # divides its token sum by (all processes' tokens / world), not its own count.
                n_tok = global_token_normalizer(acc, mb_mask)
                if head:
                    logits, v = policy(ids, ro.attention_mask[mb], ro.position_ids[mb])
                else:
                    logits = policy(input_ids=ids, attention_mask=ro.attention_mask[mb],
                                    position_ids=ro.position_ids[mb], use_cache=False).logits
                lp = token_logprobs(logits, ids, cfg.temperature)  # (b, T-1)
                if reuse_lp:  # the only update: its forward is the sampling policy's
                    old_lp[mb] = lp.detach() * mb_mask
                loss, pm = ppo_policy_loss(lp, old_lp[mb], adv[mb], mb_mask, clip=cfg.cliprange, num_tokens=n_tok)
                if cfg.kl_in == "loss":
                    kl_loss = (kl_k3(lp, ref_lp[mb]) * mb_mask).sum() / n_tok
                    loss = loss + beta * kl_loss
                    pm["kl_loss"] = kl_loss.item()
                with torch.no_grad():
                    pm["entropy"] = masked_mean(entropy_from_logits(logits[:, :-1], cfg.temperature), mb_mask).item()
                pm["pg_loss"] = loss.item()
                if head:
                    v_loss, vm = ppo_value_loss(v, values[mb], returns[mb], mb_mask, clip=cfg.cliprange_value,
                                                num_tokens=n_tok)
                    loss = loss + cfg.vf_coef * v_loss
                    pm.update(vm, vf_loss=v_loss.item())
                acc.backward(loss)
                if clip_and_step(acc, policy, optimizer, scheduler, cfg.max_grad_norm) is None:
                    run.nonfinite(step + 1, pm["pg_loss"])
                if ppo and not head:
                    v = critic(ids, ro.attention_mask[mb], ro.position_ids[mb])
                    v_loss, vm = ppo_value_loss(v, values[mb], returns[mb], mb_mask, clip=cfg.cliprange_value,
                                                num_tokens=n_tok)
                    acc.backward(v_loss)
                    if clip_and_step(acc, critic, v_opt, v_sched, cfg.max_grad_norm) is None:
                        run.nonfinite(step + 1, v_loss.item())
                    pm.update(vm, vf_loss=v_loss.item())
                if epoch == 0 and mb_i == 0:  # item 12: must be ratio 1, approx_kl 0, clipfrac 0
                    first = {f"first_{key}": pm[key] for key in ("ratio", "approx_kl", "clipfrac")}
                for key, val in pm.items():
                    sums[key] = sums.get(key, 0.0) + val
                n_updates += 1
        if reuse_lp:  # the sequence KL needed the log-probs the update just produced
            m["seq_kl"] = _mean(acc, ((kl_k1(old_lp, ref_lp) * mask).sum(-1)).tolist())
        m.update({key: _mean(acc, [v / n_updates]) for key, v in sums.items()})
        m.update({key: _mean(acc, [v]) for key, v in first.items()}, lr=scheduler.get_last_lr()[0])
        kl_ctl.update(m["seq_kl"], len(score) * world)
        eps_seen += len(score) * world
        done = step + 1
        bar.update(1)
        bar.set_postfix(kl=f"{m['seq_kl']:.3f}", r=f"{m['proxy_reward']:.3f}", refresh=False)
        if cfg.max_kl is not None and m["seq_kl"] > cfg.max_kl:
            alarm = {"step": done, "seq_kl": m["seq_kl"], "max_kl": cfg.max_kl, "action": cfg.kl_alarm}
            log.warning("step %d: sequence KL %.4f above max_kl %.4f (%s)", done, m["seq_kl"], cfg.max_kl,
                        cfg.kl_alarm)
            m["alarm_kl"] = 1
        n = cfg.gap_alarm_steps
        if gap_widening(gaps, n):
            # Over-optimisation signature (Gao et al. 2022): the proxy pulls away from the gold
            # reward step after step. Needs a gold function (synthetic world).
            alarm = {"step": done, "proxy_gold_gap": gaps[-1], "widening_steps": n, "action": cfg.gap_alarm}
            log.warning("step %d: proxy-gold gap widened %d steps in a row (now %.4f) (%s)", done, n, gaps[-1],
                        cfg.gap_alarm)
            m["alarm_gap"] = 1
        state = {"kl_ctl": kl_ctl.state_dict(), "best": best, "gaps": gaps}
        if alarm and alarm["action"] == "stop":
            last_eval = run.log_step(done, done, m, evaluate) or last_eval  # always logged (and evaluated)
            run.ckpts.save(done, state)
            break
        last_eval = run.log_step(done, n_steps, m, evaluate) or last_eval
        if run.after_step(done, n_steps, state):
            bar.close()
            acc.end_training()
            return run_dir / "checkpoints" / "latest"
    bar.close()

    acc.wait_for_everyone()
    stopped = bool(alarm and alarm["action"] == "stop")
    if not stopped:
        run.ckpts.save(n_steps, {"final": True, "kl_ctl": kl_ctl.state_dict(), "best": best, "gaps": gaps})
    final = run_dir / "final"
    summary = {
        "stage": "ppo", "estimator": cfg.estimator, "samples_per_prompt": k, "steps": n_steps,
        "steps_done": done if n_steps > start else start, "processes": world, "prompts": len(prompts),
        "data": data_report, "reference": "adapter disabled" if cfg.lora_r else "frozen copy",
        "critic": ("policy_head" if head else (cfg.value_model or cfg.reward_model or cfg.model)) if ppo else None,
        "final_kl_coef": kl_ctl.value, "alarm": alarm, "stopped_by_alarm": stopped,
        "best": {**best, "dir": str(run_dir / "best") if best["step"] is not None else None,
                 "metric": "gold_reward" if gold_fn else "proxy_reward"},
        **{f"initial_{key}": v for key, v in initial_eval.items()},
        **{f"final_{key}": v for key, v in last_eval.items()},
        "episodes_per_second": eps_seen / max(time.time() - t0, 1e-9), "model_dir": str(final),
    }
    if acc.is_main_process:
        save_hf(net, tok, final)
        write_json(run_dir / "summary.json", summary)
    acc.wait_for_everyone()
    acc.end_training()
    return final


def _mean(acc, values: list[float]) -> float:
    """Mean over this process's values, averaged over processes (equal counts per process)."""
    t = torch.tensor(sum(values) / max(len(values), 1), dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        t = acc.reduce(t, reduction="mean")
    return float(t.item())
