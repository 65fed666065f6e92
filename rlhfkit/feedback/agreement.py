"""Inter-annotator agreement over judgement tables: raw agreement, Cohen's / Fleiss' kappa,
Krippendorff's alpha, majority vote and how much it helps, per-annotator agreement with the rest.

Why these numbers. Preference labels are noisy, and the noise sets a ceiling on what a reward model
fit to them can reach (see :mod:`rlhfkit.feedback.simulate`). Before training on collected
judgements a team wants to know (a) how often two people agree at all — raw pairwise agreement,
directly comparable with the 63-77% that RLHF papers report for human labelers (RLHF-DETAILS,
yardsticks; the same range :mod:`rlhfkit.feedback.simulate` calibrates its labelers to); (b) how much
of that is more than chance — the kappas and
alpha, which matter because "A" vs "B" with a 50/50 base rate already agrees half the time by luck;
(c) whether aggregating several annotators per item pays off — majority-vote uplift; and (d) which
annotators disagree with everyone else — per-annotator agreement with the leave-one-out consensus.

Input. Every function takes *judgement records* ``(item_id, annotator_id, label)``: one row per
judgement, exactly the shape the store's judgement table has. ``label`` is any hashable value — a
categorical choice ("A", "B", "tie", "both_bad") or an ordinal/interval value (strength 1-4). A
``None`` label is a missing judgement and is dropped. The same annotator judging the same item twice
is a ``ValueError`` (the store makes resubmission idempotent, so a duplicate here is a bug upstream).
Empty input, or input with nothing pairable, is a ``ValueError`` with a message saying which.
:func:`pivot` turns records into an items x annotators matrix with ``None`` where missing.

Undefined statistics. A chance-corrected coefficient is ``(observed - expected) / (1 - expected)``;
when every judgement carries the *same* label, expected agreement is 1 and the ratio is 0/0. The
data then say nothing about reliability (no variation to agree on), so these functions return
``nan`` rather than a flattering 1.0; raw agreement is still 1.0. Perfect agreement over *varied*
labels gives exactly 1.0.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import numpy as np

Record = tuple[Hashable, Hashable, Hashable]


# ---------------------------------------------------------------------------------------------
# input handling


def _by_item(records: Iterable[Record]) -> dict[Hashable, dict[Hashable, Hashable]]:
    """``{item: {annotator: label}}`` in first-appearance order; validates the records."""
    out: dict[Hashable, dict[Hashable, Hashable]] = {}
    n = 0
    for rec in records:
        try:
            item, annotator, label = rec
        except (TypeError, ValueError):
            raise ValueError(f"a judgement record is (item_id, annotator_id, label), got {rec!r}") from None
        n += 1
        if label is None:
            continue
        row = out.setdefault(item, {})
        if annotator in row:
            raise ValueError(f"annotator {annotator!r} judged item {item!r} more than once")
        row[annotator] = label
    if n == 0:
        raise ValueError("no judgement records given")
    if not out:
        raise ValueError("every judgement record has a missing (None) label")
    return out


def _pairable(by_item: Mapping[Hashable, Mapping[Hashable, Hashable]],
              what: str) -> dict[Hashable, list[Hashable]]:
    """Items with >= 2 judgements -> their labels; ValueError if there are none."""
    out = {item: list(row.values()) for item, row in by_item.items() if len(row) >= 2}
    if not out:
        raise ValueError(f"{what} needs at least one item judged by two or more annotators")
    return out


@dataclass(frozen=True)
class JudgementMatrix:
    """Records pivoted to ``matrix[i, j]`` = label annotator ``annotators[j]`` gave item ``items[i]``,
    ``None`` where that annotator did not judge that item (object array; rows and columns in order
    of first appearance)."""

    items: list[Hashable]
    annotators: list[Hashable]
    matrix: np.ndarray  # (n_items, n_annotators), dtype object

    def column(self, annotator: Hashable) -> list[Hashable]:
        """One annotator's labels over ``items``, ``None`` where missing (feeds :func:`cohens_kappa`)."""
        return list(self.matrix[:, self.annotators.index(annotator)])


def pivot(records: Iterable[Record]) -> JudgementMatrix:
    """Records -> items x annotators matrix with ``None`` for missing judgements."""
    by_item = _by_item(records)
    annotators: dict[Hashable, int] = {}
    for row in by_item.values():
        for a in row:
            annotators.setdefault(a, len(annotators))
    items = list(by_item)
    matrix = np.full((len(items), len(annotators)), None, dtype=object)
    for i, item in enumerate(items):
        for a, label in by_item[item].items():
            matrix[i, annotators[a]] = label
    return JudgementMatrix(items=items, annotators=list(annotators), matrix=matrix)


# ---------------------------------------------------------------------------------------------
# raw agreement and kappas


def pairwise_agreement(records: Iterable[Record], per: Literal["pair", "item"] = "pair") -> float:
    """Raw agreement: the share of pairs of judgements on the same item that carry the same label.

    This is the number RLHF papers quote when they say labelers agree 63-77% of the time, and is
    directly comparable with it (no chance correction: two coin-flipping labelers on A/B agree 50%).
    An item judged ``m`` times contributes its ``m(m-1)/2`` pairs; items judged once are ignored.

    ``per="pair"`` (default) pools all pairs, so an item with more annotators weighs more;
    ``per="item"`` averages each item's own share of agreeing pairs (Fleiss' ``P-bar``), so every
    item weighs the same. With a constant number of annotators per item the two coincide.
    """
    if per not in ("pair", "item"):
        raise ValueError(f"per must be 'pair' or 'item', got {per!r}")
    groups = _pairable(_by_item(records), "pairwise_agreement")
    agree_total, pairs_total, per_item = 0, 0, []
    for labels in groups.values():
        m = len(labels)
        pairs = m * (m - 1) // 2
        agree = sum(c * (c - 1) // 2 for c in Counter(labels).values())
        agree_total += agree
        pairs_total += pairs
        per_item.append(agree / pairs)
    return agree_total / pairs_total if per == "pair" else float(np.mean(per_item))


def cohens_kappa(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> float:
    """Cohen's kappa for two annotators who labelled the same items, position by position.

    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the share of items they agree on and
    ``p_e = sum_c p_a(c) p_b(c)`` the agreement expected if each labelled at random with their own
    label frequencies. Positions where either label is ``None`` are dropped. Returns ``nan`` when
    ``p_e == 1`` (both used one and the same label throughout: 0/0, see the module docstring).
    """
    if len(labels_a) != len(labels_b):
        raise ValueError(f"labels_a has {len(labels_a)} labels but labels_b has {len(labels_b)}")
    pairs = [(a, b) for a, b in zip(labels_a, labels_b) if a is not None and b is not None]
    if not pairs:
        raise ValueError("cohens_kappa needs at least one item labelled by both annotators")
    n = len(pairs)
    p_o = sum(a == b for a, b in pairs) / n
    count_a = Counter(a for a, _ in pairs)
    count_b = Counter(b for _, b in pairs)
    p_e = sum(count_a[c] * count_b[c] for c in count_a) / (n * n)
    if math.isclose(p_e, 1.0):
        return math.nan
    return (p_o - p_e) / (1 - p_e)


def cohens_kappa_by_pair(records: Iterable[Record],
                         min_shared: int = 10) -> dict[tuple[Hashable, Hashable], tuple[float, int]]:
    """Cohen's kappa for every pair of annotators sharing >= ``min_shared`` items.

    Returns ``{(annotator_a, annotator_b): (kappa, n_shared)}`` with the pair in first-appearance
    order. Pairs with fewer shared items are left out: kappa over a handful of items is mostly
    noise (its standard error is roughly ``1 / sqrt(n)``).
    """
    if min_shared < 1:
        raise ValueError(f"min_shared must be >= 1, got {min_shared}")
    table = pivot(records)
    out: dict[tuple[Hashable, Hashable], tuple[float, int]] = {}
    for j, k in combinations(range(len(table.annotators)), 2):
        col_j, col_k = table.matrix[:, j], table.matrix[:, k]
        both = [(a, b) for a, b in zip(col_j, col_k) if a is not None and b is not None]
        if len(both) >= min_shared:
            out[(table.annotators[j], table.annotators[k])] = (
                cohens_kappa([a for a, _ in both], [b for _, b in both]), len(both))
    return out


def mean_pairwise_cohens_kappa(records: Iterable[Record], min_shared: int = 10) -> float:
    """Mean of Cohen's kappa over annotator pairs sharing >= ``min_shared`` items (Light's kappa
    generalised to incomplete designs). Each qualifying pair weighs the same; pairs whose kappa is
    undefined (``nan``) are skipped, and the result is ``nan`` if all are. ``ValueError`` if no pair
    shares enough items."""
    pairs = cohens_kappa_by_pair(records, min_shared)
    if not pairs:
        raise ValueError(f"no pair of annotators shares >= {min_shared} items")
    kappas = np.array([k for k, _ in pairs.values()], dtype=np.float64)
    if np.isnan(kappas).all():
        return math.nan
    return float(np.nanmean(kappas))


def fleiss_kappa(records: Iterable[Record]) -> float:
    """Fleiss' kappa: chance-corrected agreement for any number of (interchangeable) raters.

    Fleiss (1971) assumes every item has the same number of ratings ``n``. Real queues don't, so
    this uses the standard generalisation to varying ``n_i`` (items with ``n_i < 2`` are dropped):

        P_i   = sum_c n_ic (n_ic - 1) / (n_i (n_i - 1))     share of agreeing rater pairs on item i
        P-bar = mean_i P_i                                   every item weighs the same
        p_c   = sum_i n_ic / sum_i n_i                       pooled category shares
        P_e   = sum_c p_c^2
        kappa = (P-bar - P_e) / (1 - P_e)

    With equal ``n_i`` this is exactly Fleiss' formula (the classic 10-item, 14-rater example gives
    0.210). Which annotator gave which rating is ignored. ``nan`` when ``P_e == 1`` (one label only).
    """
    groups = _pairable(_by_item(records), "fleiss_kappa")
    categories: dict[Hashable, int] = {}
    for labels in groups.values():
        for lab in labels:
            categories.setdefault(lab, len(categories))
    counts = np.zeros((len(groups), len(categories)), dtype=np.float64)  # (items, categories)
    for i, labels in enumerate(groups.values()):
        for lab in labels:
            counts[i, categories[lab]] += 1
    n_i = counts.sum(axis=1)  # (items,)
    p_i = (counts * (counts - 1)).sum(axis=1) / (n_i * (n_i - 1))
    p_bar = p_i.mean()
    p_c = counts.sum(axis=0) / n_i.sum()  # (categories,)
    p_e = float((p_c ** 2).sum())
    if math.isclose(p_e, 1.0):
        return math.nan
    return float((p_bar - p_e) / (1 - p_e))


# ---------------------------------------------------------------------------------------------
# Krippendorff's alpha


def coincidence_matrix(records: Iterable[Record],
                       order: Sequence[Hashable] | None = None) -> tuple[list[Hashable], np.ndarray]:
    """Krippendorff's coincidence matrix ``o[c, k]`` and its value list.

    Every item with ``m_u >= 2`` values contributes each ordered pair of values from *different*
    annotators with weight ``1 / (m_u - 1)``, so each item contributes exactly ``m_u`` in total (one
    per pairable value) however many annotators it had. The matrix is symmetric; its row sums are
    the value counts ``n_c`` and its total is ``n``, the number of pairable values.

    Values are ordered by ``order`` if given (every value must appear in it; values listed but not
    observed get zero rows), else sorted (which is the rank order for numeric labels).
    """
    groups = _pairable(_by_item(records), "krippendorff_alpha")
    observed = {lab for labels in groups.values() for lab in labels}
    if order is not None:
        values = list(order)
        missing = observed - set(values)
        if missing:
            raise ValueError(f"labels {sorted(map(repr, missing))} are not in order={values!r}")
    else:
        try:
            values = sorted(observed)
        except TypeError:
            values = sorted(observed, key=repr)
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)), dtype=np.float64)
    for labels in groups.values():
        m = len(labels)
        for x, y in combinations(labels, 2):  # unordered pairs; add both orders
            o[index[x], index[y]] += 1 / (m - 1)
            o[index[y], index[x]] += 1 / (m - 1)
    return values, o


def _delta2(level: str, values: list[Hashable], n_c: np.ndarray) -> np.ndarray:
    """Squared difference function ``delta^2[c, k]`` (Krippendorff 2011)."""
    k = len(values)
    if level == "nominal":
        return 1.0 - np.eye(k)
    if level == "interval":
        try:
            v = np.array([float(x) for x in values], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"level='interval' needs numeric labels, got {values!r}") from None
        return (v[:, None] - v[None, :]) ** 2
    if level == "ordinal":
        # delta^2[c,k] = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2 : distance between ranks measured in
        # how many pairable values lie between them, so it depends on the observed value counts.
        cum = np.concatenate([[0.0], np.cumsum(n_c)])  # cum[i] = sum of n_g for g < i
        d = np.zeros((k, k), dtype=np.float64)
        for c in range(k):
            for e in range(c, k):
                d[c, e] = d[e, c] = (cum[e + 1] - cum[c] - (n_c[c] + n_c[e]) / 2) ** 2
        return d
    raise ValueError(f"level must be 'nominal', 'ordinal' or 'interval', got {level!r}")


def krippendorff_alpha(records: Iterable[Record],
                       level: Literal["nominal", "ordinal", "interval"] = "nominal",
                       order: Sequence[Hashable] | None = None) -> float:
    """Krippendorff's alpha, ``1 - D_o / D_e``, from the coincidence matrix (Krippendorff 2011).

    ``D_o = sum_ck o_ck delta^2_ck / n`` is the observed disagreement and
    ``D_e = sum_ck n_c n_k delta^2_ck / (n (n - 1))`` the disagreement expected by chance; so

        alpha = 1 - (n - 1) * sum_ck o_ck delta^2_ck / sum_ck n_c n_k delta^2_ck.

    Missing data are the point of alpha: any annotator may skip any item, and items with fewer than
    two values are not pairable and drop out (``ValueError`` if none is left). ``level`` picks
    ``delta^2``: ``"nominal"`` (0 if equal else 1; for choices A / B / tie / both_bad),
    ``"ordinal"`` (rank distance weighted by the observed value counts, Krippendorff 2011; for
    strength 1-4: adjacent-rank disagreements cost less than far ones), ``"interval"``
    (``(c - k)^2``; numeric labels). For ordinal labels that do not sort naturally pass ``order``.

    1 is perfect agreement, 0 is chance, negative is systematic disagreement. ``nan`` when only one
    value occurs (``D_e = 0``: nothing to agree on). Published check: Krippendorff's 4-observer,
    12-unit example gives 0.743 nominal, 0.815 ordinal, 0.849 interval.
    """
    values, o = coincidence_matrix(records, order)
    n_c = o.sum(axis=1)  # (values,)
    n = n_c.sum()
    d2 = _delta2(level, values, n_c)
    expected = float((np.outer(n_c, n_c) * d2).sum())
    if expected == 0.0:
        return math.nan
    observed = float((o * d2).sum())
    return 1.0 - (n - 1) * observed / expected


# ---------------------------------------------------------------------------------------------
# majority vote and agreement with the consensus


def _winners(labels: Iterable[Hashable]) -> list[Hashable]:
    """The most frequent labels (more than one if tied), in a deterministic order."""
    counts = Counter(labels)
    if not counts:
        return []
    top = max(counts.values())
    tied = [lab for lab, c in counts.items() if c == top]
    try:
        return sorted(tied)
    except TypeError:
        return sorted(tied, key=repr)


def _credit(label: Hashable, winners: list[Hashable]) -> float:
    """Expected agreement of ``label`` with a vote broken uniformly at random among ``winners``.

    A tied vote is neither right nor wrong; scoring it the way a random tie-break would keeps
    majority-vote accuracy unbiased, rather than assuming ties count as wrong (or as right)."""
    return 1.0 / len(winners) if label in winners else 0.0


def majority_vote(records: Iterable[Record],
                  ties: Literal["mark", "lowest"] = "mark") -> dict[Hashable, Hashable | None]:
    """Consensus label per item: the label most annotators gave.

    ``ties="mark"`` (default) maps an item whose vote is tied (e.g. one "A", one "B") to ``None``:
    for preference data a split vote is information — the pair is genuinely ambiguous — and should
    not be silently turned into a training label. ``ties="lowest"`` picks the smallest tied label
    in sorted order (``repr`` order if labels do not sort), deterministic but arbitrary.
    Items judged once get that one label.
    """
    if ties not in ("mark", "lowest"):
        raise ValueError(f"ties must be 'mark' or 'lowest', got {ties!r}")
    out: dict[Hashable, Hashable | None] = {}
    for item, row in _by_item(records).items():
        w = _winners(row.values())
        out[item] = w[0] if len(w) == 1 or ties == "lowest" else None
    return out


@dataclass(frozen=True)
class MajorityVoteUplift:
    """How much aggregation helps. ``majority_accuracy`` and ``single_accuracy`` are over the same
    ``n_items`` items, each item weighing the same; ``uplift = majority - single``. ``mode`` says
    what "accuracy" is measured against: ``"gold"`` labels or ``"leave_one_out"`` (a held-out
    annotator; see :func:`majority_vote_uplift`)."""

    majority_accuracy: float
    single_accuracy: float
    uplift: float
    n_items: int
    mode: Literal["gold", "leave_one_out"]


def majority_vote_uplift(records: Iterable[Record],
                         gold: Mapping[Hashable, Hashable] | None = None) -> MajorityVoteUplift:
    """Accuracy of the majority vote vs that of a single annotator: is paying for k labels worth it?

    With ``gold`` (item -> correct label; e.g. the gold ordering in the synthetic world): over items
    that have a gold label and at least one judgement, ``single_accuracy`` is the mean over items of
    the share of that item's judgements matching gold (the accuracy of one randomly drawn annotator),
    and ``majority_accuracy`` the mean over items of the majority vote matching gold, a tied vote
    scoring as a random tie-break would (``1/k`` if gold is among the ``k`` tied labels).

    Without gold, a held-out annotator stands in for it: on every item with ``m >= 3`` judgements,
    each judgement in turn is the reference; ``majority_accuracy`` is how often the majority of the
    *other* ``m - 1`` matches it (ties as above) and ``single_accuracy`` how often one other
    annotator does (which is the item's pairwise agreement). Both are averaged over judgements, then
    over items. The reference is itself noisy, so both numbers are lower than against gold, but the
    noise is independent of the others' votes, so a positive uplift still means aggregation helps.
    Items with ``m = 2`` are left out (the "majority" of one other is just a single annotator).
    """
    by_item = _by_item(records)
    maj, single = [], []
    if gold is not None:
        for item, row in by_item.items():
            if item not in gold or gold[item] is None:
                continue
            labels = list(row.values())
            g = gold[item]
            single.append(sum(lab == g for lab in labels) / len(labels))
            maj.append(_credit(g, _winners(labels)))
        if not maj:
            raise ValueError("no judged item has a gold label")
        mode: Literal["gold", "leave_one_out"] = "gold"
    else:
        for row in by_item.values():
            labels = list(row.values())
            m = len(labels)
            if m < 3:
                continue
            maj_i, single_i = 0.0, 0.0
            for j, ref in enumerate(labels):
                others = labels[:j] + labels[j + 1:]
                maj_i += _credit(ref, _winners(others))
                single_i += sum(o == ref for o in others) / (m - 1)
            maj.append(maj_i / m)
            single.append(single_i / m)
        if not maj:
            raise ValueError("leave-one-out uplift needs items with >= 3 judgements (or pass gold=)")
        mode = "leave_one_out"
    m_acc, s_acc = float(np.mean(maj)), float(np.mean(single))
    return MajorityVoteUplift(majority_accuracy=m_acc, single_accuracy=s_acc, uplift=m_acc - s_acc,
                              n_items=len(maj), mode=mode)


@dataclass(frozen=True)
class AnnotatorAgreement:
    """One annotator's agreement with the consensus of the others, over ``n_items`` items
    (``nan`` with ``n_items == 0`` if they never shared an item with anyone)."""

    agreement: float
    n_items: int


def per_annotator_agreement(records: Iterable[Record]) -> dict[Hashable, AnnotatorAgreement]:
    """For each annotator, how often their label matches the majority of the *other* annotators.

    Leave-one-out, so an annotator's own vote never props up the consensus they are compared with
    (with two annotators per item it is plain agreement with the other one). Only items someone
    else also judged count; a tied consensus of the others scores ``1/k`` if the annotator's label
    is among the ``k`` tied labels (what a random tie-break would score). An annotator far below
    the rest is the one to retrain or drop; compare with :func:`pairwise_agreement` overall.
    """
    by_item = _by_item(records)
    credit: dict[Hashable, list[float]] = defaultdict(list)
    seen: dict[Hashable, None] = {}
    for row in by_item.values():
        for a, label in row.items():
            seen.setdefault(a, None)
            others = [lab for b, lab in row.items() if b != a]
            if others:
                credit[a].append(_credit(label, _winners(others)))
    return {a: AnnotatorAgreement(agreement=float(np.mean(credit[a])) if credit[a] else math.nan,
                                  n_items=len(credit[a])) for a in seen}
