"""`rlhf label judge`: an AI judge answers a project's queue like any annotator.

The judge is an annotator with role ``judge`` and its spec recorded in the store, and it goes
through ``next_task`` / ``submit`` as people and simulated labelers do, so agreement, leaderboards
and export treat its judgements like anyone's. Around that path:

1. **Both orders.** Every pair is asked as (A, B) and (B, A) and combined as in
   :mod:`~rlhfkit.feedback.judges.base`. A K-way task asks all K(K-1) ordered pairs of a pairwise
   judge and ranks by wins (a pair's order-averaged winner gets 1, an exact 1/2 gives both 1/2;
   equal win counts share a rank group); a pointwise judge ranks by score (equal scores share a group).
2. **Order-dependent verdicts** (the winner flips with the order shown) follow ``inconsistent``:
   ``weakest`` (default) records the order-averaged winner at strength 1, "negligibly better". Not a
   tie: the store's ties say "both good" / "both bad", a claim about absolute quality the judge never
   made, while the averaged probability still leans one way and strength 1 is the store's own word
   for a preference one would not bet on (export gives it the smallest margin; agreement statistics
   keep it). ``tie_bad`` records a tie instead, and ``skip`` leaves the task to other annotators. In
   a ranking such a pair counts as a draw under ``tie_bad`` / ``skip``. summary.json reports the
   position-consistency rate (share of pairs whose two orders agree) and how often the first
   position was preferred (0.5 for an unbiased judge), both over every pair the judge's spec
   answered in the journal (every run, not only this one).
3. **Strength** is 1 + how many ``strength_bins`` edges the confidence |2p - 1| reaches.
4. **Nothing is asked twice.** Answers go to ``output_dir/judge_journal.jsonl`` before use (base.py).
   The queue serves one task at a time, so to keep ``concurrency`` requests busy the runner asks, when
   it meets an unanswered task, also about the next ``batch_size`` - 1 tasks the queue is likely to
   serve this judge (open, not judged by it); a guess the queue then gives to someone else costs
   questions, never a wrong label. A killed run resumes: the queue hands back the tasks this judge
   still holds, and their answers come from the journal.
5. A task the judge cannot decide (a failed query, an exact 1/2, a ranking with all responses tied)
   is skipped through the store and counted in summary.json.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import Counter
from itertools import combinations, permutations
from pathlib import Path

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.feedback.judges.base import (Journal, JudgeError, Query, pair_verdict, sigmoid, spec_hash,
                                          strength_of)

log = logging.getLogger(__name__)
JOURNAL = "judge_journal.jsonl"


def build_judge(spec):
    """The judge object of a spec (models are loaded, env vars and labels checked, here)."""
    if spec.kind == "function":
        from rlhfkit.feedback.judges.function import FunctionJudge
        return FunctionJudge(spec)
    if spec.kind == "reward_model":
        from rlhfkit.feedback.judges.function import RewardModelJudge
        return RewardModelJudge(spec)
    if spec.kind == "local_lm":
        from rlhfkit.feedback.judges.local_lm import LocalLMJudge
        return LocalLMJudge(spec)
    from rlhfkit.feedback.judges.endpoint import OpenAIJudge
    return OpenAIJudge(spec)


def task_queries(task_id: int, prompt: str, responses: list[tuple[int, str]], pointwise: bool) -> list[Query]:
    """Every question a task needs: one per response (pointwise), or every ordered pair (pairwise)."""
    if pointwise:
        return [Query(task_id, (rid,), prompt, (text,)) for rid, text in responses]
    return [Query(task_id, (a[0], b[0]), prompt, (a[1], b[1])) for a, b in permutations(responses, 2)]


def _key(task_id: int, ids) -> str:
    return Query(task_id, tuple(ids), "", ()).key


class Verdicts:
    """Turns journaled answers into store submissions (module docstring, notes 1-3) and counts."""

    def __init__(self, values: dict[str, float | None], pointwise: bool, inconsistent: str, bins):
        self.values, self.pointwise, self.inconsistent, self.bins = values, pointwise, inconsistent, bins
        self.pairs = 0  # pair verdicts made (both orders asked)
        self.consistent = 0

    def _pair(self, task_id: int, first: int, second: int):
        """The combined verdict of one pair, first-shown first."""
        if self.pointwise:
            d = self.values[_key(task_id, [first])] - self.values[_key(task_id, [second])]
            p_ab, p_ba = sigmoid(d), sigmoid(-d)
        else:
            p_ab = self.values[_key(task_id, [first, second])]
            p_ba = self.values[_key(task_id, [second, first])]
        v = pair_verdict(p_ab, p_ba)
        self.pairs += 1
        self.consistent += v.consistent
        return v

    def submission(self, task_id: int, shown: list[int]) -> tuple[dict | None, str | None]:
        """(``store.submit`` keywords relative to ``shown``, None) or (None, why the task is skipped)."""
        needed = task_queries(task_id, "", [(i, "") for i in shown], self.pointwise)
        failed = [q.key for q in needed if self.values.get(q.key) is None]
        if failed:
            return None, "failed"
        if len(shown) == 2:
            return self._pair_submission(task_id, shown)
        return self._ranking(task_id, shown)

    def _pair_submission(self, task_id: int, shown: list[int]):
        v = self._pair(task_id, shown[0], shown[1])
        if v.p_first == 0.5:
            return None, "undecided"
        choice = "A" if v.p_first > 0.5 else "B"
        if v.consistent:
            return {"choice": choice, "strength": strength_of(v.p_first, self.bins)}, None
        if self.inconsistent == "skip":
            return None, "inconsistent"
        if self.inconsistent == "tie_bad":
            return {"choice": "tie_bad", "strength": None}, None
        return {"choice": choice, "strength": 1}, None

    def _ranking(self, task_id: int, shown: list[int]):
        if self.pointwise:
            for a, b in combinations(shown, 2):  # counted for the consistency rate (always consistent)
                self._pair(task_id, a, b)
            merit = {i: self.values[_key(task_id, [i])] for i in shown}
        else:
            merit = dict.fromkeys(shown, 0.0)
            for a, b in combinations(shown, 2):
                v = self._pair(task_id, a, b)
                share = v.p_first
                if not v.consistent and self.inconsistent != "weakest":
                    share = 0.5  # an order-dependent pair is a draw
                merit[a] += 1.0 if share > 0.5 else 0.5 if share == 0.5 else 0.0
                merit[b] += 1.0 if share < 0.5 else 0.5 if share == 0.5 else 0.0
        levels = sorted(set(merit.values()), reverse=True)
        if len(levels) == 1:
            return None, "undecided"
        groups = [sorted(i for i in shown if merit[i] == m) for m in levels]
        return {"ranking": groups}, None


def _register(store, cfg, h: str):
    """The judge's annotator: created with role judge and its spec, or the existing one of this spec."""
    spec = {**cfg.judge.model_dump(mode="json", exclude=set(cfg.judge.transport_keys)), "hash": h}
    name = cfg.name or f"judge-{h[:8]}"
    me = store.get_annotator(name)
    if me is None:
        # A random password nobody knows; a judge cannot log in whatever its password (store.accounts).
        return store.add_annotator(name, secrets.token_urlsafe(24), role="judge", spec=spec)
    if me.role != "judge":
        raise ConfigError(f"name: annotator '{name}' is a person (role {me.role}), not a judge; choose "
                          "another name")
    if (me.spec or {}).get("hash") != h:
        raise ConfigError(f"name: judge '{name}' was recorded with another spec (hash "
                          f"{(me.spec or {}).get('hash', '?')[:8]}, this one {h[:8]}); one annotator is one "
                          "judge: choose another name")
    return me


class _Runner:
    def __init__(self, store, cfg, judge, journal: Journal, me):
        self.store, self.cfg, self.judge, self.journal, self.me = store, cfg, judge, journal, me
        self.values = {k: v for k, (v, _) in journal.answers.items()}
        self.verdicts = Verdicts(self.values, judge.pointwise, cfg.inconsistent, cfg.strength_bins)
        self.asked = 0
        self.failures: list[dict] = []
        self.outcomes = Counter()

    def record(self, q: Query, value: float | None, info: dict) -> None:
        self.journal.add(q, value, info)  # journaled first: a crash after this loses nothing
        self.values[q.key] = value
        self.asked += 1
        if "error" in info:
            self.failures.append({"task_id": q.task_id, "query": q.key, "error": info["error"]})

    def _candidates(self, current: int) -> list[dict]:
        """Open tasks the queue may serve this judge next, in its order (calibration, then oldest)."""
        counts = Counter()
        mine = set()
        for j in self.store.judgements(self.cfg.project):
            counts[j["task_id"]] += 1
            if j["annotator_id"] == self.me.id:
                mine.add(j["task_id"])
        out = []
        tasks = sorted(self.store.tasks(self.cfg.project), key=lambda t: (not t["calibration"], t["task_id"]))
        for t in tasks:
            uncapped = t["calibration"] or t["gold_answer"] is not None
            if t["task_id"] == current or t["task_id"] in mine:
                continue
            if uncapped or counts[t["task_id"]] < t["annotators_needed"]:
                out.append(t)
        return out

    def prefetch(self, task_id: int, prompt: str, responses: list[tuple[int, str]]) -> None:
        queries = task_queries(task_id, prompt, responses, self.judge.pointwise)
        window = self.cfg.judge.batch_size - 1
        for t in self._candidates(task_id) if window > 0 else []:
            more = task_queries(t["task_id"], t["prompt"], list(zip(t["response_ids"], t["texts"])),
                                self.judge.pointwise)
            if any(q.key not in self.journal for q in more):
                queries += more
                window -= 1
                if window == 0:
                    break
        self.judge.ask([q for q in queries if q.key not in self.journal], self.record)

    def run(self) -> int:
        from tqdm.auto import tqdm

        total = len(self._candidates(-1))
        if self.cfg.max_tasks is not None:
            total = min(total, self.cfg.max_tasks)
        done = 0
        with tqdm(total=total, desc=f"judge {self.me.name}", unit="task", dynamic_ncols=True) as bar:
            while self.cfg.max_tasks is None or done < self.cfg.max_tasks:
                view = self.store.next_task(self.cfg.project, self.me.id)
                if view is None:
                    break
                shown = [rid for rid, _ in view.responses]
                if any(q.key not in self.journal
                       for q in task_queries(view.id, view.prompt, view.responses, self.judge.pointwise)):
                    self.prefetch(view.id, view.prompt, list(view.responses))
                answer, why = self.verdicts.submission(view.id, shown)
                if answer is None:
                    self.store.skip(view.id, self.me.id)
                    self.outcomes[f"skipped_{why}"] += 1
                else:
                    self.store.submit(view.id, self.me.id, displayed_order=shown, **answer)
                    self.outcomes["judged"] += 1
                    self.outcomes["ties"] += answer.get("choice") == "tie_bad"
                done += 1
                bar.update(1)
        return done

    def _pairwise_answers(self) -> dict[tuple[int, int, int], float]:
        out = {}
        for key, v in self.values.items():
            task, _, ids = key.partition(":")
            if v is not None and ids.count("-") == 1:
                a, b = ids.split("-")
                out[int(task), int(a), int(b)] = v
        return out

    def first_position_rate(self) -> float | None:
        """Share of this spec's pairwise answers (journal, every run) preferring the first shown response."""
        ps = list(self._pairwise_answers().values())
        return sum(p > 0.5 for p in ps) / len(ps) if ps else None

    def consistency(self) -> tuple[int, float | None]:
        """(pairs, position-consistency rate) over every pair this spec answered in both orders, in any
        run (journal), so a resumed run reports on all of them. A pointwise judge cannot depend on the
        order: its rate is over the pairs of this run's verdicts, 1 by construction."""
        if self.judge.pointwise:
            v = self.verdicts
            return v.pairs, (v.consistent / v.pairs if v.pairs else None)
        answers = self._pairwise_answers()
        both = [(p, answers[t, b, a]) for (t, a, b), p in answers.items() if a < b and (t, b, a) in answers]
        consistent = sum(pair_verdict(p_ab, p_ba).consistent for p_ab, p_ba in both)
        return len(both), (consistent / len(both) if both else None)


def _summary(cfg, runner: _Runner, me, status: str) -> dict:
    from rlhfkit.feedback.quality import gold_accuracy

    js = runner.store.judgements(cfg.project)
    gold = gold_accuracy([j for j in js if j["annotator_id"] == me.id]).get(me.id)
    pairs, consistency = runner.consistency()
    return {
        "project": cfg.project, "judge": me.name, "kind": cfg.judge.kind, "spec_hash": me.spec.get("hash"),
        "status": status,
        "judgements": runner.outcomes["judged"],
        "ties": runner.outcomes["ties"],
        "skipped": {k.removeprefix("skipped_"): n for k, n in runner.outcomes.items()
                    if k.startswith("skipped_")},
        "pairs_asked_both_orders": pairs,
        "position_consistency": consistency,
        "first_position_preferred": runner.first_position_rate(),
        "questions_asked": runner.asked,
        "answers_reused_from_journal": runner.journal.reused,
        "requests": getattr(runner.judge, "requests", None),
        "retries": getattr(runner.judge, "retries", None),
        "gold": None if gold is None else {"n": gold["n"], "accuracy": gold["accuracy"]},
        "failures": runner.failures[:100],
        "failures_total": len(runner.failures),
        "progress": runner.store.progress(cfg.project),
    }


def judge_labels(cfg) -> dict:
    """`rlhf label judge`: see the module docstring. Returns (and writes) summary.json."""
    from rlhfkit.config import save_config
    from rlhfkit.feedback.store import FeedbackStore

    h = spec_hash(cfg.judge)
    judge = build_judge(cfg.judge)  # before the store: a missing key or bad label stops here
    out = Path(cfg.output_dir)
    save_config(cfg, out)
    journal = Journal(out / JOURNAL, h)
    store = FeedbackStore(cfg.store)
    try:
        store.get_project(cfg.project)  # NotFoundError naming the project
        me = _register(store, cfg, h)
        runner = _Runner(store, cfg, judge, journal, me)
        status = "complete"
        try:
            runner.run()
        except (RlhfkitError, KeyboardInterrupt) as e:
            # What was judged is in the store and every answer in the journal; say so, then stop.
            status = f"stopped: {type(e).__name__}: {e}"
            try:
                _write(out, _summary(cfg, runner, me, status))
            except Exception as inner:  # e.g. the store itself failed: the original error matters more
                log.warning("could not write summary.json after the judge stopped: %s", inner)
            raise
        summary = _summary(cfg, runner, me, status)
    finally:
        journal.close()
        store.close()
    _write(out, summary)
    log.info("judge %s: %d judgements, position consistency %s", summary["judge"], summary["judgements"],
             summary["position_consistency"])
    return summary


def _write(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


__all__ = ["JudgeError", "Verdicts", "build_judge", "judge_labels", "task_queries"]
