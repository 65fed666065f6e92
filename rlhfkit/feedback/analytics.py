"""Admin analytics over collected judgements: a Bradley-Terry leaderboard of the compared models
with bootstrap confidence intervals, a position-bias check, per-annotator statistics and an
agreement summary.

Every function is pure: it takes the list of judgement dicts that
``FeedbackStore.judgements(project)`` returns (keys ``task_id``, ``annotator``, ``response_ids``,
``model_ids``, ``choice`` (canonical: "A"/"B" = ``response_ids[0]``/``[1]`` won, "tie_good",
"tie_bad"), ``ranking`` (groups of response ids, best first), ``strength``, ``position_chosen``
(0 left / 1 right / None), ``seconds``...) and returns plain dataclasses the admin pages render.

Leaderboard. Each judgement is turned into model-vs-model outcomes: a pair judgement is one game
between the two responses' models; a K-way ranking is every pair of responses in different groups
(the better group wins; responses in one group tie). A tie counts as half a win for each side
(``ties="half"``, as arena-style leaderboards do) or is dropped (``ties="drop"``). Two responses of
the same model say nothing about models and are skipped. The Bradley-Terry strengths ``theta``
(P(i beats j) = sigmoid(theta_i - theta_j)) maximise the log-likelihood minus a tiny ridge
``ridge/2 * |theta|^2``: the ridge keeps a model that won every game finite and, because the
likelihood is shift-invariant, also pins the solution to ``sum(theta) = 0``. Fitted by damped
Newton (the penalised objective is strictly concave, so it converges in a handful of steps).
Confidence intervals: percentile bootstrap that resamples *tasks* with replacement (the
judgements of one task are correlated, so tasks are the independent unit), seeded.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from statistics import median
from typing import Any, Literal

import numpy as np

from rlhfkit.feedback import agreement as agr

Judgement = dict[str, Any]
TIES = ("tie_good", "tie_bad")


def _is_ranking(j: Judgement) -> bool:
    """A K-way judgement? The store fills ``ranking`` for pairs too ([[winner], [loser]]), so the
    task ``kind`` decides; rows without one count as rankings only when they carry no choice."""
    kind = j.get("kind")
    if kind is not None:
        return kind == "ranking"
    return j.get("choice") is None and bool(j.get("ranking"))
# Elo points per unit of theta: 400 Elo = a factor 10 in odds.
ELO_PER_THETA = 400.0 / math.log(10.0)


# ---------------------------------------------------------------------------------------------
# Bradley-Terry


def outcomes(judgements: Iterable[Judgement],
             ties: Literal["half", "drop"] = "half") -> list[tuple[Hashable, str, str, float]]:
    """Model-vs-model games ``(task_id, model_i, model_j, score_i)``, ``score_i`` in {0, 0.5, 1}
    (the share of the game model_i won)."""
    if ties not in ("half", "drop"):
        raise ValueError(f"ties must be 'half' or 'drop', got {ties!r}")
    out = []
    for j in judgements:
        rids, mids = list(j["response_ids"]), list(j["model_ids"])
        model_of = dict(zip(rids, mids))
        if _is_ranking(j):
            # rank index of every response: equal index = tied
            rank = {rid: g for g, group in enumerate(j["ranking"]) for rid in group}
            for a, b in combinations(rids, 2):
                if a not in rank or b not in rank:
                    continue
                score = 1.0 if rank[a] < rank[b] else 0.0 if rank[a] > rank[b] else 0.5
                out.append((j["task_id"], model_of[a], model_of[b], score))
        else:
            choice = j.get("choice")
            if choice is None or len(rids) != 2:
                continue
            score = {"A": 1.0, "B": 0.0}.get(choice, 0.5)
            out.append((j["task_id"], mids[0], mids[1], score))
    return [o for o in out if o[1] != o[2] and (ties == "half" or o[3] != 0.5)]


def _game_arrays(games: Sequence[tuple[Hashable, str, str, float]], models: Sequence[str]):
    """Games as arrays: model indices ``i``, ``j``, score of i ``s`` and task index, each (G,)."""
    index = {m: i for i, m in enumerate(models)}
    tasks: dict[Hashable, int] = {}
    i = np.array([index[g[1]] for g in games], dtype=np.int64)
    j = np.array([index[g[2]] for g in games], dtype=np.int64)
    s = np.array([g[3] for g in games], dtype=np.float64)
    t = np.array([tasks.setdefault(g[0], len(tasks)) for g in games], dtype=np.int64)
    return i, j, s, t, len(tasks)


def _counts(i: np.ndarray, j: np.ndarray, s: np.ndarray, k: int,
            weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n[a, b] = (weighted) games between a and b, w[a, b] = (fractional) wins of a over b."""
    weight = np.ones_like(s) if weight is None else weight
    n = np.zeros((k, k))
    w = np.zeros((k, k))
    np.add.at(n, (i, j), weight)
    np.add.at(n, (j, i), weight)
    np.add.at(w, (i, j), weight * s)
    np.add.at(w, (j, i), weight * (1 - s))
    return n, w


def _fit_counts(n: np.ndarray, w: np.ndarray, ridge: float, tol: float = 1e-10,
                max_iter: int = 200) -> np.ndarray:
    """Maximise sum_ab w_ab log sigmoid(theta_a - theta_b) - ridge/2 |theta|^2 by damped Newton."""
    k = n.shape[0]
    wins = w.sum(axis=1)  # (k,)

    def objective(t: np.ndarray) -> float:
        d = t[:, None] - t[None, :]
        # log sigmoid(d) = -log(1 + exp(-d)), stable via logaddexp
        return float((w * -np.logaddexp(0.0, -d)).sum() - ridge / 2 * (t ** 2).sum())

    theta = np.zeros(k)
    value = objective(theta)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))  # p[a, b] = P(a beats b)
        grad = wins - (n * p).sum(axis=1) - ridge * theta
        c = n * p * (1 - p)
        hess = c - np.diag(c.sum(axis=1)) - ridge * np.eye(k)  # negative definite
        step = np.linalg.solve(hess, -grad)
        # Backtrack so every step increases the objective (plain Newton can overshoot when a
        # model won nearly everything and theta is far out on the flat part of the sigmoid).
        t = 1.0
        while True:
            cand = theta + t * step
            cand_value = objective(cand)
            if cand_value >= value - 1e-12 or t < 1e-8:
                break
            t /= 2
        theta, value = cand, cand_value
        if np.abs(t * step).max() < tol:
            break
    return theta - theta.mean()


def fit_bradley_terry(games: Sequence[tuple[Hashable, str, str, float]], models: Sequence[str],
                      ridge: float = 1e-4) -> np.ndarray:
    """Penalised Bradley-Terry strengths ``theta`` (one per ``models`` entry, summing to 0)."""
    i, j, s, _, _ = _game_arrays(games, models)
    return _fit_counts(*_counts(i, j, s, len(models)), ridge)


@dataclass(frozen=True)
class LeaderboardRow:
    model: str
    theta: float           # Bradley-Terry log-strength (sum over models = 0)
    ci_low: float          # bootstrap percentile interval of theta
    ci_high: float
    elo: float             # 1000 + theta in Elo points, for readers used to arena tables
    games: int             # games this model played (ties included)
    win_rate: float        # share of its games won (ties count half)


def leaderboard(judgements: Sequence[Judgement], *, n_boot: int = 200, seed: int = 0,
                ci: float = 0.95, ridge: float = 1e-4,
                ties: Literal["half", "drop"] = "half") -> list[LeaderboardRow]:
    """Bradley-Terry leaderboard, best first, with task-resampling bootstrap intervals.
    Empty list if there is no game between two different models."""
    games = outcomes(judgements, ties)
    if not games:
        return []
    models = sorted({g[1] for g in games} | {g[2] for g in games})
    i, j, s, task, n_tasks = _game_arrays(games, models)
    k = len(models)
    theta = _fit_counts(*_counts(i, j, s, k), ridge)
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, k))
    for b in range(n_boot):
        # A bootstrap sample of tasks = every game weighted by how often its task was drawn.
        drawn = np.bincount(rng.integers(0, n_tasks, size=n_tasks), minlength=n_tasks)
        boots[b] = _fit_counts(*_counts(i, j, s, k, drawn[task].astype(np.float64)), ridge)
    alpha = (1 - ci) / 2
    lo = np.quantile(boots, alpha, axis=0) if n_boot else theta
    hi = np.quantile(boots, 1 - alpha, axis=0) if n_boot else theta
    played = defaultdict(int)
    won = defaultdict(float)
    for _, a, b, s in games:
        played[a] += 1
        played[b] += 1
        won[a] += s
        won[b] += 1 - s
    rows = [LeaderboardRow(model=m, theta=float(theta[i]), ci_low=float(lo[i]), ci_high=float(hi[i]),
                           elo=1000.0 + ELO_PER_THETA * float(theta[i]), games=played[m],
                           win_rate=won[m] / played[m]) for i, m in enumerate(models)]
    return sorted(rows, key=lambda r: -r.theta)


# ---------------------------------------------------------------------------------------------
# position bias


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided binomial test of ``k`` successes in ``n`` against p = 0.5.

    Under p = 0.5 the distribution is symmetric, so the two-sided p-value (the probability of an
    outcome at least as unlikely as ``k``) is ``2 * P(X <= min(k, n - k))``, capped at 1."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    m = min(k, n - k)
    # log-space pmf so large n neither overflows comb() floats nor underflows 0.5**n
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
                 for i in range(m + 1)]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class PositionBias:
    n: int             # non-tie pair judgements with a recorded position
    left: int          # of which chose the response shown first (left)
    left_rate: float   # left / n (nan when n == 0)
    p_value: float     # exact binomial two-sided test of left_rate = 0.5


def position_bias(judgements: Iterable[Judgement]) -> PositionBias:
    """Do annotators pick the left (first shown) response more often than chance? With
    randomised display order a fair annotator's left rate is 0.5 whatever the models' quality."""
    positions = [j["position_chosen"] for j in judgements
                 if not _is_ranking(j) and j.get("choice") not in TIES
                 and j.get("position_chosen") is not None]
    n = len(positions)
    left = sum(1 for p in positions if p == 0)
    return PositionBias(n=n, left=left, left_rate=left / n if n else math.nan,
                        p_value=binomial_two_sided_p(left, n))


# ---------------------------------------------------------------------------------------------
# per-annotator statistics and agreement


def _label(j: Judgement) -> Hashable:
    """A hashable, canonical label of one judgement: the choice for a pair, the ranking as a tuple
    of sorted groups for a K-way task (so two identical rankings compare equal)."""
    if _is_ranking(j):
        return tuple(tuple(sorted(g)) for g in j["ranking"])
    return j.get("choice")


def records(judgements: Iterable[Judgement], field: str = "choice") -> list[tuple]:
    """Agreement records ``(task_id, annotator, label)``: ``field="choice"`` uses the canonical
    choice/ranking, ``field="strength"`` the strength (None where not given, dropped downstream)."""
    if field == "choice":
        return [(j["task_id"], j["annotator"], _label(j)) for j in judgements]
    return [(j["task_id"], j["annotator"], j.get(field)) for j in judgements]


@dataclass(frozen=True)
class AnnotatorStats:
    annotator: str
    count: int
    median_seconds: float        # nan when no judgement recorded a time
    tie_rate: float              # share of pair judgements that are ties (good or bad)
    left_rate: float             # share of non-tie pair judgements choosing the left response
    agreement: float             # with the leave-one-out consensus (nan if never overlapped)
    agreement_items: int


def annotator_stats(judgements: Sequence[Judgement]) -> list[AnnotatorStats]:
    """One row per annotator, in name order."""
    by_ann: dict[str, list[Judgement]] = defaultdict(list)
    for j in judgements:
        by_ann[j["annotator"]].append(j)
    try:
        consensus = agr.per_annotator_agreement(records(judgements))
    except ValueError:  # no judgement with a label at all
        consensus = {}
    rows = []
    for name in sorted(by_ann):
        js = by_ann[name]
        secs = [float(j["seconds"]) for j in js if j.get("seconds") is not None]
        pairs = [j for j in js if not _is_ranking(j) and j.get("choice") is not None]
        ties_ = [j for j in pairs if j["choice"] in TIES]
        decided = [j for j in pairs if j["choice"] not in TIES and j.get("position_chosen") is not None]
        c = consensus.get(name)
        rows.append(AnnotatorStats(
            annotator=name, count=len(js), median_seconds=median(secs) if secs else math.nan,
            tie_rate=len(ties_) / len(pairs) if pairs else math.nan,
            left_rate=sum(j["position_chosen"] == 0 for j in decided) / len(decided) if decided else math.nan,
            agreement=c.agreement if c else math.nan, agreement_items=c.n_items if c else 0))
    return rows


@dataclass(frozen=True)
class Statistic:
    name: str
    value: float | None   # None when it could not be computed; ``note`` says why
    note: str = ""


def agreement_summary(judgements: Sequence[Judgement], min_shared: int = 5) -> list[Statistic]:
    """The agreement numbers of :mod:`rlhfkit.feedback.agreement` for the admin page; a statistic
    the data cannot support (e.g. no task judged twice yet) is reported with the reason."""
    choice = records(judgements, "choice")
    strength = records(judgements, "strength")

    def stat(name: str, fn, *args) -> Statistic:
        try:
            v = fn(*args)
        except ValueError as e:
            return Statistic(name, None, str(e))
        if isinstance(v, agr.MajorityVoteUplift):
            return Statistic(name, v.uplift, f"majority {v.majority_accuracy:.3f} vs single "
                             f"{v.single_accuracy:.3f} over {v.n_items} items ({v.mode})")
        v = float(v)
        return Statistic(name, None if math.isnan(v) else v,
                         "undefined: every judgement has the same label" if math.isnan(v) else "")

    return [
        stat("raw pairwise agreement", agr.pairwise_agreement, choice),
        stat(f"Cohen's kappa (mean over annotator pairs sharing >= {min_shared} tasks)",
             agr.mean_pairwise_cohens_kappa, choice, min_shared),
        stat("Fleiss' kappa", agr.fleiss_kappa, choice),
        stat("Krippendorff's alpha, nominal (choice)", agr.krippendorff_alpha, choice, "nominal"),
        stat("Krippendorff's alpha, ordinal (strength)", agr.krippendorff_alpha, strength, "ordinal"),
        stat("majority-vote uplift (leave one out)", agr.majority_vote_uplift, choice),
    ]
