"""Labels weighted by reliability: Dawid-Skene latent-class EM on an (items x annotators) label array.

Dawid & Skene (1979): every item i has a hidden true class z_i in {0 .. K-1} with prior pi, and every
annotator a answers l in {0 .. L-1} (L >= K: answers beyond the classes, such as a tie, are allowed)
with probability ``confusion[a, z_i, l]``, independently given z_i. EM alternates

* E-step: ``posterior[i, k] proportional to pi_k * prod over a who labelled i of confusion[a, k, y_ia]``
  (in log space, so hundreds of annotators do not underflow);
* M-step: the confusion rows and the class prior from the posterior-weighted answer counts.

Choices, each against a known failure:

* **Smoothing (MAP, not ML)**: ``smoothing`` pseudo-counts are added to every cell of every confusion
  row and to the class prior (a symmetric Dirichlet(1 + smoothing) prior). Plain ML gives an annotator
  with one label a confusion of exactly 1.0 (log 0 = -inf for any other answer), so one label of a
  newcomer would overrule a whole crowd. With smoothing 1, an annotator with a single label has
  accuracy about 0.6 on that class, and one with hundreds its empirical rate.
* **Deterministic start from majority vote**: the first M-step uses the vote shares (answers >= K,
  e.g. ties, do not vote; an item without a vote starts uniform). Nothing is random, so the same labels
  always give the same result, and classes keep their meaning (no label switching) as long as the
  crowd is better than chance on the whole.
* **Convergence**: stops when no posterior moves by more than ``tol`` in an iteration (or after
  ``max_iter``; ``converged`` says which).

``accuracy[a] = sum_k pi_k confusion[a, k, k]``: the probability that annotator a gives the true
class on a random item (an answer beyond the classes, e.g. a tie, counts as not right).

For a pair task (see :mod:`rlhfkit.feedback.export`) the classes are "A better" (0) and "B better" (1)
and a tie is the observed answer 2: ties are modelled as answers, not as a class, so a tie moves the
posterior only as far as that annotator's tie rate differs between the two classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MISSING = -1
"""The entry of the label array for "this annotator did not label this item"."""


@dataclass
class DawidSkeneResult:
    posterior: np.ndarray  # (I, K) P(z_i = k | all labels)
    confusion: np.ndarray  # (A, K, L) P(annotator a answers l | z = k)
    class_prior: np.ndarray  # (K,)
    accuracy: np.ndarray  # (A,) sum_k pi_k confusion[a, k, k]
    n_labels: np.ndarray  # (A,) labels given by each annotator
    iterations: int
    converged: bool


def majority_posterior(labels: np.ndarray, n_classes: int = 2) -> np.ndarray:
    """(I, K) vote shares per item over the classes (answers >= K and MISSING do not vote); uniform
    for an item without a vote. Its argmax is majority vote (ties between classes -> the lower class)."""
    y = np.asarray(labels)
    votes = np.stack([(y == k).sum(axis=1) for k in range(n_classes)], axis=1).astype(np.float64)  # (I, K)
    total = votes.sum(axis=1, keepdims=True)
    return np.where(total > 0, votes / np.maximum(total, 1.0), 1.0 / n_classes)


def dawid_skene(labels: np.ndarray, *, n_classes: int = 2, n_answers: int | None = None,
                smoothing: float = 1.0, max_iter: int = 200, tol: float = 1e-6) -> DawidSkeneResult:
    """Fit Dawid-Skene to ``labels`` (I, A) ints: ``labels[i, a]`` the answer of annotator a on item i
    in ``0 .. n_answers-1`` (classes first), or :data:`MISSING`. ``n_answers`` defaults to
    ``max(n_classes, largest answer + 1)``. See the module docstring for the model and the choices."""
    y = np.asarray(labels)
    if y.ndim != 2 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 2-d integer array (items x annotators), got {y.dtype} {y.shape}")
    if n_classes < 2 or smoothing < 0 or max_iter < 1 or tol <= 0:
        raise ValueError("need n_classes >= 2, smoothing >= 0, max_iter >= 1 and tol > 0")
    n_items, n_ann = y.shape
    n_ans = n_answers if n_answers is not None else max(n_classes, int(y.max(initial=-1)) + 1)
    if n_ans < n_classes or y.min(initial=0) < MISSING or y.max(initial=-1) >= n_ans:
        raise ValueError(f"answers must be in 0..{n_ans - 1} (or {MISSING} for missing), and n_answers >= "
                         f"n_classes")
    item, ann = np.nonzero(y != MISSING)  # (N,) one entry per observed label
    ans = y[item, ann]  # (N,)
    post = majority_posterior(y, n_classes)  # (I, K)
    converged, iterations = False, 0
    while iterations < max_iter:
        iterations += 1
        # M-step: MAP confusion rows and class prior from posterior-weighted counts.
        counts = np.full((n_ann, n_classes, n_ans), float(smoothing))  # (A, K, L)
        for k in range(n_classes):
            np.add.at(counts[:, k, :], (ann, ans), post[item, k])
        confusion = counts / counts.sum(axis=2, keepdims=True)
        prior = (post.sum(axis=0) + smoothing) / (n_items + n_classes * smoothing)  # (K,)
        # E-step, in log space.
        log_post = np.tile(np.log(prior), (n_items, 1))  # (I, K)
        np.add.at(log_post, item, np.log(confusion[ann, :, ans]))  # confusion[ann, :, ans]: (N, K)
        log_post -= log_post.max(axis=1, keepdims=True)
        new = np.exp(log_post)
        new /= new.sum(axis=1, keepdims=True)
        delta = float(np.abs(new - post).max(initial=0.0))
        post = new
        if delta < tol:
            converged = True
            break
    accuracy = np.einsum("k,akk->a", prior, confusion[:, :, :n_classes])
    n_labels = (y != MISSING).sum(axis=0)
    return DawidSkeneResult(posterior=post, confusion=confusion, class_prior=prior, accuracy=accuracy,
                            n_labels=n_labels, iterations=iterations, converged=converged)


# ---------------------------------------------------------------------------------------------
# pair labels as the feedback store gives them ("A", "B", or a tie), for rlhf label export

_ANSWER = {"A": 0, "B": 1}  # anything else (tie_good, tie_bad, tie) is the answer 2


def fit_pair_labels(items: dict, names: dict | None = None, *,
                    smoothing: float = 1.0) -> tuple[dict, list[dict]]:
    """Dawid-Skene on pair labels: ``items`` maps an item key (e.g. (task id, position pair)) to
    ``{annotator id: "A" | "B" | a tie kind}``. Returns ``{item key: P(A is better)}`` and one dict per
    annotator, most labels first: ``annotator_id``, ``annotator`` (from ``names``), ``accuracy`` (see
    :class:`DawidSkeneResult`), ``labels`` (how many), ``tie_rate``. Ties are the answer 2 when any
    label is a tie (see the module docstring); with none the model has two answers."""
    keys = list(items)
    ann_ids = sorted({a for labs in items.values() for a in labs})
    col = {a: n for n, a in enumerate(ann_ids)}
    y = np.full((len(keys), len(ann_ids)), MISSING, dtype=np.int64)
    for i, key in enumerate(keys):
        for a, lab in items[key].items():
            y[i, col[a]] = _ANSWER.get(lab, 2)
    res = dawid_skene(y, n_classes=2, smoothing=smoothing)
    names = names or {}
    ties = (y == 2).sum(axis=0)
    table = [{"annotator_id": a, "annotator": names.get(a, str(a)), "accuracy": float(res.accuracy[n]),
              "labels": int(res.n_labels[n]), "tie_rate": float(ties[n] / max(res.n_labels[n], 1))}
             for n, a in enumerate(ann_ids)]
    table.sort(key=lambda r: (-r["labels"], str(r["annotator"])))
    return {key: float(res.posterior[i, 0]) for i, key in enumerate(keys)}, table
