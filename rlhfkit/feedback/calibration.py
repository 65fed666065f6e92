"""Judge–human calibration: can an AI judge's labels stand in for people's on this project?

Who is who. Annotators with role ``judge`` (``rlhfkit.feedback.judges``) are judges; every other
role (``annotator``, ``admin``) is a person. Labels are the canonical ones the agreement statistics
use (:func:`rlhfkit.feedback.analytics.records`: the choice of a pair, the ranking of a K-way task).

What is measured, per judge, on the tasks people also labelled:

- ``n_shared``: tasks the judge labelled that have a human majority label
  (:func:`rlhfkit.feedback.agreement.majority_vote`; a split human vote has none and is left out,
  as export leaves it out: there is no human answer to agree with). One person on a task is that
  task's majority.
- ``agreement``: the share of those tasks on which the judge's label equals the human majority.
- ``kappa``: Cohen's κ of the judge's labels against the human-majority labels
  (:func:`~rlhfkit.feedback.agreement.cohens_kappa`).
- ``gold_accuracy``: the judge's mean score on gold questions (:func:`rlhfkit.feedback.quality.gold_score`),
  when the project has judged gold questions.

Next to it, for people: ``human_kappa``, the mean pairwise Cohen's κ between people over the pairs
sharing at least ``min_tasks`` tasks (:func:`~rlhfkit.feedback.agreement.mean_pairwise_cohens_kappa`,
Light's κ for incomplete designs). Why this reference: it is what "people agree with each other this
much" means, and it needs no majority, so it exists as soon as two people overlap. It is *lenient*
towards judges: a judge is compared with a majority, which is less noisy than the single person on
the other side of a human pair, so a judge exactly as good as one person scores somewhat higher
against the majority than people score against each other. ``judge_margin`` is then a tolerance on
top of that, and a judge that fails even this lenient test is clearly worse than people.

Intervals: percentile bootstrap over *tasks* (a task's labels are correlated, so tasks are the
independent unit, as in :func:`rlhfkit.feedback.analytics.leaderboard`), seeded: every replicate
draws the project's tasks with replacement once, and every statistic is recomputed on the draw (a
task drawn twice counts twice). Which human pairs enter ``human_kappa`` is fixed by the full data,
so a replicate changes the weights of the same pairs rather than which pairs count. Replicates
where a statistic is undefined (e.g. κ when one label fills the draw) are left out of its interval.

The export gate (``rlhf label export judges=calibrated``, :func:`gate`): a judge is kept when
``kappa >= human_kappa - judge_margin`` (point estimates); dropped when it is below, when it shares
fewer than ``min_tasks`` tasks with people (κ over a handful of tasks is mostly noise: its standard
error is roughly ``1/sqrt(n)``, so the default 20 keeps it near 0.2), when its κ is undefined, or
when ``human_kappa`` itself cannot be estimated (no two people share ``min_tasks`` tasks): with
nothing to compare against, keeping AI labels would be a guess.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from rlhfkit.feedback import agreement as agr
from rlhfkit.feedback.analytics import records
from rlhfkit.feedback.quality import gold_score

log = logging.getLogger("rlhfkit.feedback.export")  # the gate's decisions are the export's log lines
JUDGE_ROLE = "judge"
MIN_SHARED_TASKS = 20  # default of LabelExportConfig.judge_min_tasks; see the module docstring
DEFAULT_MARGIN = 0.1
GateMode = Literal["all", "calibrated", "none"]

Interval = tuple[float, float]
_NAN_CI: Interval = (math.nan, math.nan)


@dataclass(frozen=True)
class JudgeCalibration:
    """One judge against people (see the module docstring for each number)."""

    judge: str
    judge_id: int
    judgements: int
    n_shared: int
    agreement: float
    agreement_ci: Interval
    kappa: float
    kappa_ci: Interval
    gold_n: int = 0
    gold_accuracy: float | None = None
    gold_ci: Interval | None = None


@dataclass(frozen=True)
class Calibration:
    """Every judge of a project against people, and people against each other."""

    judges: list[JudgeCalibration]
    humans: list[str]
    human_kappa: float            # nan when no two people share min_tasks tasks (human_pairs == 0)
    human_kappa_ci: Interval
    human_pairs: int              # pairs of people entering human_kappa
    human_gold_accuracy: float | None
    tasks_with_majority: int      # tasks with a human majority label
    counts: dict[str, dict[str, int]]  # kind ("human" | "judge") -> annotators, judgements, tasks
    matrix: dict[tuple[str, str], tuple[float, float, int]] = field(default_factory=dict)
    # ^ (human, judge) -> (raw agreement, kappa, shared tasks): the agreement matrix people x judges
    min_tasks: int = MIN_SHARED_TASKS
    n_boot: int = 0
    seed: int = 0

    def judge(self, name: str) -> JudgeCalibration:
        return next(j for j in self.judges if j.judge == name)


@dataclass(frozen=True)
class GateDecision:
    """What the export gate does with one judge, and why (``reason`` is a sentence for people)."""

    judge: str
    judge_id: int
    kept: bool
    reason: str
    kappa: float
    human_kappa: float
    margin: float
    n_shared: int

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------------------------
# calibration


def _safe_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    try:
        return agr.cohens_kappa(a, b)
    except ValueError:  # nothing shared in this draw
        return math.nan


def _percentile(values: list[float], ci: float) -> Interval:
    """Percentile interval of the finite replicates; (nan, nan) when there is none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return _NAN_CI
    alpha = (1 - ci) / 2
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = weights.sum()
    return float((values * weights).sum() / total) if total > 0 else math.nan


class _Resampled:
    """A statistic over some tasks, evaluated on a bootstrap draw: ``counts[t]`` is how often task
    index ``t`` was drawn; a shared task's labels are repeated that many times."""

    def __init__(self, task_index: Sequence[int], a: Sequence[Hashable], b: Sequence[Hashable]):
        self.idx = np.asarray(task_index, dtype=np.int64)
        self.a = np.empty(len(a), dtype=object)
        self.a[:] = list(a)
        self.b = np.empty(len(b), dtype=object)
        self.b[:] = list(b)
        self.eq = np.array([x == y for x, y in zip(a, b)], dtype=np.float64)

    def agreement(self, counts: np.ndarray) -> float:
        return _weighted_mean(self.eq, counts[self.idx].astype(np.float64))

    def kappa(self, counts: np.ndarray) -> float:
        rep = counts[self.idx]
        return _safe_kappa(list(np.repeat(self.a, rep)), list(np.repeat(self.b, rep)))


def calibrate(judgements: Sequence[dict], roles: Mapping[int, str], *, min_tasks: int = MIN_SHARED_TASKS,
              n_boot: int = 200, seed: int = 0, ci: float = 0.95) -> Calibration:
    """Calibration of every judge in ``judgements`` (``FeedbackStore.judgements(project)`` rows);
    ``roles`` maps annotator ids to roles (annotators missing from it count as people).
    ``n_boot=0`` skips the intervals (the export gate needs only point estimates)."""
    if min_tasks < 1:
        raise ValueError(f"min_tasks must be >= 1, got {min_tasks}")
    is_judge = {j["annotator_id"]: roles.get(j["annotator_id"]) == JUDGE_ROLE for j in judgements}
    human_js = [j for j in judgements if not is_judge[j["annotator_id"]]]
    judge_js = [j for j in judgements if is_judge[j["annotator_id"]]]
    human_recs = [r for r in records(human_js) if r[2] is not None]
    majority = agr.majority_vote(human_recs) if human_recs else {}
    tasks = sorted({j["task_id"] for j in judgements})
    tix = {t: i for i, t in enumerate(tasks)}

    # people against each other: the pairs sharing >= min_tasks tasks, each pair its own _Resampled
    by_human: dict[str, dict[Hashable, Hashable]] = {}
    for task, name, label in human_recs:
        if label is not None:
            by_human.setdefault(name, {})[task] = label
    humans = sorted(by_human)
    pairs = []
    for i, h in enumerate(humans):
        for g in humans[i + 1:]:
            shared = sorted(set(by_human[h]) & set(by_human[g]))
            if len(shared) >= min_tasks:
                pairs.append(_Resampled([tix[t] for t in shared], [by_human[h][t] for t in shared],
                                        [by_human[g][t] for t in shared]))
    full = np.ones(len(tasks), dtype=np.int64)
    human_kappa = _mean_kappa(pairs, full)

    # each judge against the human majority
    per_judge: dict[int, list[dict]] = {}
    for j in judge_js:
        per_judge.setdefault(j["annotator_id"], []).append(j)
    stats: list[tuple[dict, _Resampled, tuple[np.ndarray, np.ndarray] | None]] = []
    for jid, js in per_judge.items():
        shared = [(t, lab) for t, _, lab in records(js) if lab is not None and majority.get(t) is not None]
        res = _Resampled([tix[t] for t, _ in shared], [lab for _, lab in shared],
                         [majority[t] for t, _ in shared])
        gold = [(tix[j["task_id"]], s) for j in js if (s := gold_score(j)) is not None]
        gold_arr = (np.array([g[0] for g in gold], dtype=np.int64),
                    np.array([g[1] for g in gold], dtype=np.float64)) if gold else None
        stats.append(({"judge": js[0]["annotator"], "judge_id": jid, "judgements": len(js),
                       "n_shared": len(shared)}, res, gold_arr))

    boots = _bootstrap(len(tasks), n_boot, seed, pairs, [(r, g) for _, r, g in stats])
    out = []
    for k, (head, res, gold_arr) in enumerate(stats):
        gold_kw: dict[str, Any] = {}
        if gold_arr is not None:
            gold_kw = {"gold_n": len(gold_arr[0]), "gold_accuracy": float(gold_arr[1].mean()),
                       "gold_ci": _percentile(boots["gold"][k], ci) if n_boot else None}
        out.append(JudgeCalibration(
            **head, agreement=res.agreement(full) if head["n_shared"] else math.nan,
            agreement_ci=_percentile(boots["agreement"][k], ci) if n_boot else _NAN_CI,
            kappa=res.kappa(full) if head["n_shared"] else math.nan,
            kappa_ci=_percentile(boots["kappa"][k], ci) if n_boot else _NAN_CI, **gold_kw))
    human_gold = [s for j in human_js if (s := gold_score(j)) is not None]
    return Calibration(
        judges=sorted(out, key=lambda c: c.judge), humans=humans, human_kappa=human_kappa,
        human_kappa_ci=_percentile(boots["human_kappa"], ci) if n_boot else _NAN_CI,
        human_pairs=len(pairs), human_gold_accuracy=float(np.mean(human_gold)) if human_gold else None,
        tasks_with_majority=sum(v is not None for v in majority.values()),
        counts={"human": _counts(human_js), "judge": _counts(judge_js)},
        matrix=_matrix(by_human, judge_js), min_tasks=min_tasks, n_boot=n_boot, seed=seed)


def _mean_kappa(pairs: list[_Resampled], counts: np.ndarray) -> float:
    kappas = [p.kappa(counts) for p in pairs]
    finite = [k for k in kappas if math.isfinite(k)]
    return float(np.mean(finite)) if finite else math.nan


def _bootstrap(n_tasks: int, n_boot: int, seed: int, pairs: list[_Resampled],
               judges: list[tuple[_Resampled, tuple[np.ndarray, np.ndarray] | None]]) -> dict:
    """Replicates of every statistic on the same task draws (one rng, seeded)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"human_kappa": [], "agreement": [[] for _ in judges],
                           "kappa": [[] for _ in judges], "gold": [[] for _ in judges]}
    for _ in range(n_boot if n_tasks else 0):
        counts = np.bincount(rng.integers(0, n_tasks, size=n_tasks), minlength=n_tasks)
        out["human_kappa"].append(_mean_kappa(pairs, counts))
        for k, (res, gold) in enumerate(judges):
            out["agreement"][k].append(res.agreement(counts))
            out["kappa"][k].append(res.kappa(counts))
            if gold is not None:
                out["gold"][k].append(_weighted_mean(gold[1], counts[gold[0]].astype(np.float64)))
    return out


def _counts(js: Sequence[dict]) -> dict[str, int]:
    return {"annotators": len({j["annotator_id"] for j in js}), "judgements": len(js),
            "tasks": len({j["task_id"] for j in js})}


def _matrix(by_human: Mapping[str, Mapping[Hashable, Hashable]],
            judge_js: Sequence[dict]) -> dict[tuple[str, str], tuple[float, float, int]]:
    """(human, judge) -> (raw agreement, kappa, shared tasks) for every pair sharing a task."""
    by_judge: dict[str, dict[Hashable, Hashable]] = {}
    for task, name, label in records(judge_js):
        if label is not None:
            by_judge.setdefault(name, {})[task] = label
    out = {}
    for h, hl in by_human.items():
        for g, gl in by_judge.items():
            shared = sorted(set(hl) & set(gl))
            if shared:
                a, b = [hl[t] for t in shared], [gl[t] for t in shared]
                raw = sum(x == y for x, y in zip(a, b)) / len(shared)
                out[(h, g)] = (raw, _safe_kappa(a, b), len(shared))
    return out


# ---------------------------------------------------------------------------------------------
# the export gate


def gate(cal: Calibration, mode: GateMode = "calibrated",
         margin: float = DEFAULT_MARGIN) -> list[GateDecision]:
    """What ``judges=mode`` does with each judge of ``cal`` (see the module docstring)."""
    if mode not in ("all", "calibrated", "none"):
        raise ValueError(f"judges must be all, calibrated or none, got {mode!r}")
    hk = cal.human_kappa
    out = []
    for c in cal.judges:
        base = {"judge": c.judge, "judge_id": c.judge_id, "kappa": c.kappa, "human_kappa": hk,
                "margin": margin, "n_shared": c.n_shared}
        if mode == "all":
            kept, why = True, "judges=all keeps every judge"
        elif mode == "none":
            kept, why = False, "judges=none drops every judge"
        elif c.n_shared < cal.min_tasks:
            kept, why = False, (f"too few tasks shared with people to estimate kappa: {c.n_shared} < "
                                f"{cal.min_tasks} (judge_min_tasks)")
        elif math.isnan(hk):
            kept, why = False, (f"human-human kappa cannot be estimated: no two people share >= "
                                f"{cal.min_tasks} tasks, or their kappa is undefined")
        elif math.isnan(c.kappa):
            kept, why = False, "kappa with the human majority is undefined (one label throughout)"
        else:
            kept = c.kappa >= hk - margin
            why = (f"kappa {c.kappa:.3f} {'>=' if kept else '<'} human-human kappa {hk:.3f} - margin "
                   f"{margin:g} = {hk - margin:.3f} on {c.n_shared} shared tasks")
        out.append(GateDecision(**base, kept=kept, reason=why))
    return out


def roles_of(store) -> dict[int, str]:
    """Annotator id -> role, from the store."""
    return {a.id: a.role for a in store.list_annotators()}


def gate_judgements(store, js: list[dict], mode: GateMode, *, margin: float = DEFAULT_MARGIN,
                    min_tasks: int = MIN_SHARED_TASKS, stats: Counter | None = None) -> list[dict]:
    """``js`` without the judgements of the judges the gate drops (export's hook). ``stats`` gets
    ``judges_kept``, ``judges_dropped``, ``judgements_excluded_judge_gate`` and ``judge_gate`` (one
    :meth:`GateDecision.as_dict` per judge: kept, reason, kappa, human kappa, margin)."""
    if mode == "all":
        return js
    cal = calibrate(js, roles_of(store), min_tasks=min_tasks, n_boot=0)
    decisions = gate(cal, mode, margin)
    dropped = {d.judge_id for d in decisions if not d.kept}
    kept = [j for j in js if j["annotator_id"] not in dropped]
    for d in decisions:
        log.info("judge %s %s: %s", d.judge, "kept" if d.kept else "dropped", d.reason)
    if stats is not None:
        stats["judges_kept"] = sum(d.kept for d in decisions)
        stats["judges_dropped"] = len(dropped)
        stats["judgements_excluded_judge_gate"] = len(js) - len(kept)
        stats["judge_gate"] = [d.as_dict() for d in decisions]
    return kept


# ---------------------------------------------------------------------------------------------
# the report's "Feedback sources" section


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(iv: Interval | None) -> str:
    return "" if iv is None or any(math.isnan(v) for v in iv) else f" [{_f(iv[0])}, {_f(iv[1])}]"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def feedback_sources_markdown(cal: Calibration, decisions: Sequence[GateDecision] | None = None, *,
                              mode: GateMode = "calibrated", margin: float = DEFAULT_MARGIN) -> list[str]:
    """Markdown lines of a "Feedback sources" report section: who labelled what (per kind of
    annotator), judges against people (κ, agreement, gold, with intervals), the agreement matrix
    people x judges, and what the export gate keeps (``decisions``; computed with ``mode`` and
    ``margin`` when not given)."""
    decisions = list(decisions) if decisions is not None else gate(cal, mode, margin)
    md = ["## Feedback sources", "", "| source | annotators | judgements | tasks |", "|---|---|---|---|"]
    for kind, label in (("human", "people"), ("judge", "AI judges")):
        c = cal.counts[kind]
        md.append(f"| {label} | {c['annotators']} | {c['judgements']} | {c['tasks']} |")
    md += ["", f"Human-human Cohen's kappa (mean over {cal.human_pairs} pair(s) of people sharing >= "
           f"{cal.min_tasks} tasks): **{_f(cal.human_kappa)}**{_ci(cal.human_kappa_ci)}; people's gold "
           f"accuracy {_f(cal.human_gold_accuracy)}; {cal.tasks_with_majority} task(s) with a human "
           "majority. "
           f"Intervals: 95% percentile bootstrap over tasks ({cal.n_boot} resamples, seed {cal.seed}).", ""]
    if not cal.judges:
        return md + ["No AI judge has labelled this project.", ""]
    by_id = {d.judge_id: d for d in decisions}
    md += ["| judge | shared tasks | agreement with human majority | kappa | gold accuracy | kept | why |",
           "|---|---|---|---|---|---|---|"]
    for c in cal.judges:
        d = by_id.get(c.judge_id)
        gold = f"{_f(c.gold_accuracy)}{_ci(c.gold_ci)} ({c.gold_n})" if c.gold_n else "–"
        md.append(f"| {_cell(c.judge)} | {c.n_shared} | {_f(c.agreement)}{_ci(c.agreement_ci)} "
                  f"| {_f(c.kappa)}{_ci(c.kappa_ci)} | {gold} | {'yes' if d and d.kept else 'no'} "
                  f"| {_cell(d.reason) if d else ''} |")
    judges = [c.judge for c in cal.judges]
    md += ["", "Agreement matrix, people x judges (raw agreement / kappa, shared tasks):", "",
           "| person | " + " | ".join(_cell(g) for g in judges) + " |", "|---" * (len(judges) + 1) + "|"]
    for h in cal.humans:
        cells = []
        for g in judges:
            m = cal.matrix.get((h, g))
            cells.append(f"{_f(m[0], 2)} / {_f(m[1], 2)} ({m[2]})" if m else "–")
        md.append(f"| {_cell(h)} | " + " | ".join(cells) + " |")
    kept = [d.judge for d in decisions if d.kept]
    dropped = [d.judge for d in decisions if not d.kept]
    md += ["", f"Export gate (judges={mode}, judge_margin={margin:g}): kept {', '.join(kept) or 'none'}; "
           f"dropped {', '.join(dropped) or 'none'}.", ""]
    return md


def feedback_sources(store_url: str, project: str, *, mode: GateMode = "calibrated",
                     margin: float = DEFAULT_MARGIN, min_tasks: int = MIN_SHARED_TASKS, n_boot: int = 200,
                     seed: int = 0) -> list[str]:
    """:func:`feedback_sources_markdown` of a project in a store (what the pipeline report calls)."""
    from rlhfkit.feedback.store import FeedbackStore

    with FeedbackStore(store_url) as store:
        cal = calibrate(store.judgements(project), roles_of(store), min_tasks=min_tasks, n_boot=n_boot,
                        seed=seed)
    return feedback_sources_markdown(cal, mode=mode, margin=margin)
