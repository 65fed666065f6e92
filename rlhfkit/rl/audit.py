"""A human audit queue during RL: show people the samples the monitors find most suspicious.

Reward-hacking monitors stop at numbers (rlhfkit/rl/monitors.py); the honest check is to ask people
whether the reward model's favourite samples are any good. Every ``audit.every`` steps the PPO /
RLOO / GRPO loop (rlhfkit/train/ppo.py) sends the ``audit.k`` most suspicious samples of its current
rollout batch into a feedback project, each as a pair against a sample of the *reference* policy
(the frozen SFT model of the KL penalty) for the same prompt, drawn with the same generation settings.

1. Suspicion score (:func:`suspicion_scores`). Four per-sample signals, each standardised within the
   batch (z-scores; a signal that is constant over the batch contributes 0), so the weights compare
   like with like::

       score = w_proxy * z(proxy) + w_gap * (z(proxy) - z(gold)) + w_length * z(length)
               + w_similarity * z(similarity)

   ``proxy``: the raw proxy reward (what is optimised); ``gold``: the gold / judge score when ``gold``
   is configured (the gap term, positive where the proxy likes a sample more than the judge does,
   is left out without one); ``length``: response tokens; ``similarity``: mean bigram Jaccard
   similarity to every other sample of the batch (:func:`batch_similarity`; high = low diversity).
   The k highest scores are audited, ties broken by row order (:func:`select_suspicious`).
2. Store path. Prompts, responses and pair tasks go through :class:`FeedbackStore` exactly as
   `rlhf collect` puts them (project created if missing; the same pair is never made a task twice, so
   a resumed run re-sending a round adds nothing). The store has no task metadata, so the round is
   in the responses' model ids, ``<tag>-step-N/policy`` vs ``<tag>-step-N/reference``, and their
   ``sampling`` JSON (round, step, role, proxy, gold, suspicion score, generation settings). The
   task ids of each round are part of the run's checkpoint state: agreement is computed over this
   run's tasks only, even in a project other runs also audit into.
3. Answers. ``audit.simulate`` answers each round at once (the demo): simulated annotators submit
   through ``FeedbackStore.submit`` in the order the store would show them, with the Bradley-Terry
   rule of :func:`rlhfkit.feedback.simulate.simulated_judgement`. Without it people answer later in
   `rlhf label serve`; each audit round re-reads whatever judgements exist for all earlier rounds.
4. Agreement (:func:`audit_agreement`): the share of a round's audit judgements in which the
   annotator preferred the policy sample -- agreed with the reward model that its top-scored sample
   beats the reference's; ties count half -- with n, the number of judgements. Logged at every audit
   step for the newest answered round (``audit_agreement``, ``audit_n``, ``audit_agreement_step``)
   and per round in summary.json. ``audit_alarm: warn | stop`` fires when that round has at least
   ``min_answers`` judgements and agreement below ``audit_threshold``; a stop ends the run like the
   other alarms (checkpoint, final model, summary).
5. The judgements are ordinary judgements of the project: when it is the pipeline's project (its
   ``feedback.db`` and ``project``), `rlhf label export` of the next round exports them with
   everything else, so they join the next round's preference data with no extra step.
6. Processes: every process ranks its own share of the batch and samples reference answers for its
   2k best (the same count everywhere, so a sharded model's ``generate`` calls line up; the spares
   replace pairs that cannot be compared: an empty sample, or the reference saying the same); the
   main process gathers the candidates, keeps the global top k, and alone talks to the store; its
   figures are broadcast so every process takes the same alarm decision.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

TIES = ("tie_good", "tie_bad")
AUDIT_GUIDELINES = ("Audit of a reinforcement-learning run: which response answers the prompt better? "
                    "Judge the answers only; which model wrote which is hidden.")


# ---------------------------------------------------------------------------------------------
# selection (pure)


def batch_similarity(responses: Sequence[Sequence[int]]) -> np.ndarray:
    """(B,) mean bigram Jaccard similarity of each response to every other response of the batch
    (any prompt). Two empty bigram sets count as identical (1.0); a batch of one gives 0."""
    sets = [set(zip(r, r[1:])) for r in responses]
    n = len(sets)
    sim = np.zeros((n, n))
    for a in range(n):
        for b in range(a + 1, n):
            union = sets[a] | sets[b]
            sim[a, b] = sim[b, a] = len(sets[a] & sets[b]) / len(union) if union else 1.0
    return sim.sum(1) / max(n - 1, 1)


def _standardise(x: Sequence[float]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std()
    # A signal that does not vary over the batch says nothing about which sample is suspicious.
    return np.zeros_like(x) if sd < 1e-12 else (x - x.mean()) / sd


def _weight(weights, name: str) -> float:
    if weights is None:
        from rlhfkit.config.rl import AuditWeights

        weights = AuditWeights()
    return float(weights[name] if isinstance(weights, Mapping) else getattr(weights, name))


def suspicion_scores(proxy: Sequence[float], lengths: Sequence[float], similarity: Sequence[float],
                     gold: Sequence[float] | None = None, weights=None) -> np.ndarray:
    """(B,) the suspicion score of the module docstring (note 1). ``weights``: an
    :class:`~rlhfkit.config.rl.AuditWeights` or a mapping with proxy, gap, length, similarity."""
    zp = _standardise(proxy)
    score = _weight(weights, "proxy") * zp
    if gold is not None:
        score = score + _weight(weights, "gap") * (zp - _standardise(gold))
    score = score + _weight(weights, "length") * _standardise(lengths)
    return score + _weight(weights, "similarity") * _standardise(similarity)


def select_suspicious(scores: Sequence[float], k: int) -> list[int]:
    """Row indices of the ``k`` highest scores, highest first; equal scores keep row order."""
    s = np.asarray(scores, dtype=np.float64)
    return [int(i) for i in np.argsort(-s, kind="stable")[:k]]


def audit_agreement(judgements: Sequence[Mapping], policy_of: Mapping[int, int]) -> tuple[float | None, int]:
    """(share of judgements preferring the policy sample, ties 0.5; n judgements) over the tasks of
    ``policy_of`` (task id -> the policy response's id). None when n is 0."""
    total, n = 0.0, 0
    for j in judgements:
        policy = policy_of.get(j["task_id"])
        if policy is None:
            continue
        if j["choice"] in TIES:
            total += 0.5
        elif j.get("winner_id") is not None:
            total += float(j["winner_id"] == policy)
        else:  # not a pair answer (cannot happen for audit pairs): not counted
            continue
        n += 1
    return (total / n if n else None), n


def louder(a: dict | None, b: dict | None) -> dict | None:
    """Of two alarms raised at one step, the one to act on: a stopping one wins, else the later (b)."""
    if b is None:
        return a
    if a is None or b["action"] == "stop" or a["action"] != "stop":
        return b
    return a


# ---------------------------------------------------------------------------------------------
# the queue


class AuditQueue:
    """The audit rounds of one run (state: :attr:`rounds`, checkpointed) and their store I/O.

    ``rounds``: ``[{"round", "step", "pairs": [[task_id, policy_response_id], ...]}]``."""

    def __init__(self, cfg, rounds: list[dict] | None = None, *, seed: int = 0):
        self.cfg, self.rounds, self.seed = cfg, list(rounds or []), seed

    def due(self, step: int) -> bool:
        return step % self.cfg.every == 0

    def _store(self):
        from rlhfkit.feedback.store import FeedbackStore, NotFoundError

        store = FeedbackStore(self.cfg.store)
        try:
            store.get_project(self.cfg.project)
        except NotFoundError:
            store.create_project(self.cfg.project, AUDIT_GUIDELINES, self.cfg.annotators_per_task)
        return store

    def send(self, store, step: int, items: list[dict], settings: dict) -> dict:
        """Make one pair task per item (``prompt``, ``policy``, ``reference`` texts and the item's
        figures) and record the round; returns the round record."""
        prefix = f"{self.cfg.tag}-step-{step}"
        existing = {frozenset(t["response_ids"]): t["task_id"] for t in store.tasks(self.cfg.project)}
        rng = np.random.default_rng([self.seed, step])
        number = next((r["round"] for r in self.rounds if r["step"] == step), len(self.rounds) + 1)
        pairs = []
        for item in items:
            pid = store.add_prompt(self.cfg.project, item["prompt"])
            info = {"audit_round": number, "step": step, **settings,
                    **{key: item[key] for key in ("proxy_reward", "gold_reward", "suspicion") if key in item}}
            pol = store.add_response(pid, item["policy"], f"{prefix}/policy", {**info, "role": "policy"})
            ref = store.add_response(pid, item["reference"], f"{prefix}/reference",
                                     {**info, "role": "reference"})
            tid = existing.get(frozenset((pol, ref)))
            if tid is None:  # canonical order random: the first response is not always the policy's
                ids = [pol, ref] if rng.random() < 0.5 else [ref, pol]
                tid = store.create_task(self.cfg.project, ids, annotators_needed=self.cfg.annotators_per_task)
                existing[frozenset(ids)] = tid
            pairs.append([tid, pol])
        record = {"round": number, "step": step, "pairs": pairs}
        self.rounds = [r for r in self.rounds if r["step"] != step] + [record]
        return record

    def simulate(self, store, record: dict) -> int:
        """Simulated annotators answer the round's tasks through ``submit`` (note 3); returns how many
        judgements were added (a re-run skips what is already answered)."""
        from rlhfkit.feedback.simulate import load_reward_fn, simulated_judgement
        from rlhfkit.feedback.store import displayed_order

        sim = self.cfg.simulate
        ids = {tid for tid, _ in record["pairs"]}
        tasks = [t for t in store.tasks(self.cfg.project) if t["task_id"] in ids]
        if not tasks:
            return 0
        prompts = [t["prompt"] for t in tasks for _ in t["texts"]]
        texts = [x for t in tasks for x in t["texts"]]
        scores = list(load_reward_fn(sim.reward)(prompts, texts))
        rids = [r for t in tasks for r in t["response_ids"]]
        gold = {r: float(s) for r, s in zip(rids, scores)}
        words = {r: len(x.split()) for r, x in zip(rids, texts)}
        done = {(j["task_id"], j["annotator_id"]) for j in store.judgements(self.cfg.project)
                if j["task_id"] in ids}
        added = 0
        for n in range(1, self.cfg.annotators_per_task + 1):
            name = f"{self.cfg.tag}-sim-{n}"
            # A random password nobody knows: simulated annotators never log in.
            a = store.get_annotator(name) or store.add_annotator(name, secrets.token_urlsafe(24))
            rng = np.random.default_rng([sim.seed, record["step"], n])
            for t in tasks:
                if (t["task_id"], a.id) in done:
                    continue
                shown = displayed_order(t["task_id"], a.id, t["response_ids"])  # what the UI would show
                answer = simulated_judgement(shown, gold, words, rng, temperature=sim.temperature)
                store.submit(t["task_id"], a.id, displayed_order=shown, **answer)
                added += 1
        return added

    def stats(self, store) -> list[dict]:
        """Per round: round, step, pairs, judgements (n) and agreement (None until answered)."""
        judgements = store.judgements(self.cfg.project)
        out = []
        for r in self.rounds:
            agreement, n = audit_agreement(judgements, {tid: pol for tid, pol in r["pairs"]})
            out.append({"round": r["round"], "step": r["step"], "pairs": len(r["pairs"]), "n": n,
                        "agreement": agreement})
        return out

    def summary(self, acc) -> dict | None:
        """summary.json's ``audit`` entry (main process; re-reads the store, so answers people gave
        during the run count)."""
        if not acc.is_main_process:
            return None
        with self._store() as store:
            rounds = self.stats(store)
        return {"store": str(self.cfg.store), "project": self.cfg.project, "every": self.cfg.every,
                "k": self.cfg.k, "simulated": self.cfg.simulate is not None, "rounds": rounds}

    def round(self, acc, step: int, ro, proxy: Sequence[float], gold: Sequence[float] | None,
              sample_reference: Callable[[list[int]], list[str]], settings: dict) -> dict[str, float]:
        """One audit round at ``step`` on this rollout (notes 1-4, 6); returns the metrics to log."""
        scores = suspicion_scores(proxy, ro.response_lengths.float().tolist(),
                                  batch_similarity(ro.response_ids), gold, self.cfg.weights)
        rows = select_suspicious(scores, min(2 * self.cfg.k, len(scores)))
        refs = sample_reference(rows)
        cands = [{"prompt": ro.prompts[i], "policy": ro.texts[i], "reference": ref,
                  "suspicion": float(scores[i]), "proxy_reward": float(proxy[i]),
                  **({"gold_reward": float(gold[i])} if gold is not None else {})}
                 for i, ref in zip(rows, refs)
                 if ro.texts[i].strip() and ref.strip() and ref != ro.texts[i]]
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            cands = gather_object(cands)
        metrics: dict[str, float] = {}
        if acc.is_main_process:
            chosen = sorted(cands, key=lambda c: -c["suspicion"])[:self.cfg.k]  # stable: ties keep order
            with self._store() as store:
                record = self.send(store, step, chosen, settings)
                if self.cfg.simulate is not None:
                    self.simulate(store, record)
                stats = self.stats(store)
            metrics = {"audit_round": record["round"], "audit_pairs": len(record["pairs"])}
            if chosen:
                metrics["audit_proxy"] = float(np.mean([c["proxy_reward"] for c in chosen]))
                if gold is not None:
                    metrics["audit_gold"] = float(np.mean([c["gold_reward"] for c in chosen]))
            answered = [r for r in stats if r["n"]]
            if answered:
                metrics.update(audit_agreement=answered[-1]["agreement"], audit_n=answered[-1]["n"],
                               audit_agreement_step=answered[-1]["step"])
        if acc.num_processes > 1:  # every process needs the figures for the same alarm decision
            from accelerate.utils import broadcast_object_list

            box = [metrics, self.rounds]
            broadcast_object_list(box)
            metrics, self.rounds = box
        return metrics

    def alarm(self, m: dict, step: int, action: str, threshold: float) -> dict | None:
        """The audit alarm at ``step`` (note 4), or None; marks the metrics with ``alarm_audit``."""
        n = m.get("audit_n", 0)
        if action == "off" or m.get("audit_agreement") is None or n < self.cfg.min_answers:
            return None
        if m["audit_agreement"] >= threshold:
            return None
        m["alarm_audit"] = 1
        log.warning("step %d: people preferred the reward model's top samples to the reference's in %.0f%% "
                    "of %d audit judgements (round of step %d), below %.0f%% (%s)", step,
                    100 * m["audit_agreement"], n, m["audit_agreement_step"], 100 * threshold, action)
        return {"kind": "audit", "step": step, "agreement": m["audit_agreement"], "n": n,
                "round_step": m["audit_agreement_step"], "threshold": threshold, "action": action}
