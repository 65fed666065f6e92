"""Simulated labelers: preference pairs from a gold reward, with Bradley-Terry noise and biases.

A :class:`SimulatedLabeler` looks at two completions A and B of one prompt, with gold rewards
``g_A`` and ``g_B``, and prefers A with probability

    P(A) = sigmoid((g_A - g_B) / temperature + length_bias * (words_A - words_B))

(Bradley-Terry with temperature beta = ``temperature``; ``length_bias > 0`` is a labeler that likes
long answers whatever their quality, a known bias of human and AI raters). ``temperature -> 0`` is a
perfect labeler; ``temperature -> inf`` a coin flip. A pair whose gold rewards differ by less than
``tie_margin`` is labelled a tie.

Human labelers agree with each other on about 63-77% of comparisons (RLHF-DETAILS, yardsticks);
a temperature can be picked so that :func:`bayes_accuracy` lands in that range.

What :func:`bayes_accuracy` bounds. For an unbiased labeler, ``mean sigmoid(|g_A - g_B| / T)`` is
(a) the share of its labels that agree with the gold ordering, and (b) the highest accuracy any
model can reach at *predicting held-out labels of this labeler* (the Bayes-optimal prediction of a
label is the gold ordering itself). It is NOT a ceiling on a reward model's accuracy measured
against the *gold ordering*: Bradley-Terry label noise is unbiased, so a reward model fit to
enough such labels estimates ``g / T`` and can approach 100% there. So: held-out accuracy on the
labeler's labels should approach ``bayes_accuracy`` and not exceed it (beyond sampling noise),
while accuracy against gold should exceed it; with a length bias the gap to gold is the bias the
reward model inherited.

The gold reward enters as any callable ``reward_fn(prompts, completions) -> list[float]``; the
synthetic world's is ``rlhfkit.synthetic.gold.gold_reward_fn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


def _n_words(text: str) -> int:
    return len(text.split())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic; exact 0/1 at -inf/+inf."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def labeler_prob_a(gold_a: Sequence[float] | np.ndarray, gold_b: Sequence[float] | np.ndarray,
                   temperature: float, length_diff: Sequence[float] | np.ndarray | None = None,
                   length_bias: float = 0.0) -> np.ndarray:
    """P(labeler prefers A) = sigmoid((g_A - g_B) / T + length_bias * (len_A - len_B)), shape (n,).

    ``temperature = 0`` is the limit T -> 0+: the logit is +-inf wherever the gold rewards differ
    (the length bias cannot overturn a gold difference), and at an exact gold tie only the length
    term is left (0.5 without a length bias).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    ga = np.asarray(gold_a, dtype=np.float64)  # (n,)
    gb = np.asarray(gold_b, dtype=np.float64)  # (n,)
    delta = ga - gb  # (n,)
    bias = np.zeros_like(delta)
    if length_diff is not None and length_bias != 0:
        bias = length_bias * np.asarray(length_diff, dtype=np.float64)  # (n,)
    if temperature == 0:
        logit = np.where(delta > 0, np.inf, np.where(delta < 0, -np.inf, bias))
    else:
        logit = delta / temperature + bias
    return _sigmoid(logit)


def bayes_accuracy(gold_a: Sequence[float] | np.ndarray, gold_b: Sequence[float] | np.ndarray,
                   temperature: float, length_diff: Sequence[float] | np.ndarray | None = None,
                   length_bias: float = 0.0,
                   against: Literal["gold", "labels"] = "gold") -> float:
    """Expected accuracy of a labeler's forced choices, in closed form (no sampling).

    ``against="gold"`` (default): the expected share of the labeler's choices that agree with the
    gold ordering, ``mean over pairs of P(labeler picks the gold-better one)``; for an unbiased
    labeler ``mean sigmoid(|g_A - g_B| / T)``. Pairs with equal gold count 0.5 (no right answer).

    ``against="labels"``: the Bayes-optimal accuracy of predicting this labeler's held-out labels,
    ``mean max(p, 1 - p)`` with ``p = P(A)``, the ceiling for a reward model's accuracy on a test
    set labelled by the same labeler. Without a length bias the two coincide.

    See the module docstring for what this does and does not bound. Ties (``tie_margin``) are not
    modelled: this is the forced-choice labeler. ``length_diff`` is ``words_A - words_B`` (n,).
    """
    ga = np.asarray(gold_a, dtype=np.float64)
    gb = np.asarray(gold_b, dtype=np.float64)
    if ga.size == 0:
        raise ValueError("bayes_accuracy needs at least one pair")
    p = labeler_prob_a(ga, gb, temperature, length_diff, length_bias)  # (n,)
    if against == "labels":
        return float(np.maximum(p, 1 - p).mean())
    if against != "gold":
        raise ValueError(f"against must be 'gold' or 'labels', got {against!r}")
    delta = ga - gb
    agree = np.where(delta > 0, p, np.where(delta < 0, 1 - p, 0.5))
    return float(agree.mean())


@dataclass
class SimulatedLabeler:
    """A Bradley-Terry labeler over a gold reward; see the module docstring for the model.

    ``temperature``: BT temperature beta (0 = always the higher gold). ``length_bias``: added
    ``length_bias * (words_A - words_B)`` to the logit. ``tie_margin``: ``|g_A - g_B| <
    tie_margin`` is a tie. ``seed``: the labeler owns a ``numpy.random.Generator`` seeded with it,
    which advances across :meth:`label` calls: two labelers with the same seed fed the same
    sequence of calls return the same labels.
    """

    temperature: float
    length_bias: float = 0.0
    tie_margin: float = 0.0
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.tie_margin < 0:
            raise ValueError(f"tie_margin must be >= 0, got {self.tie_margin}")
        self._rng = np.random.default_rng(self.seed)

    def prob_a(self, gold_a: Sequence[float], gold_b: Sequence[float],
               length_diff: Sequence[float] | None = None) -> np.ndarray:
        """This labeler's P(prefers A), shape (n,)."""
        return labeler_prob_a(gold_a, gold_b, self.temperature, length_diff, self.length_bias)

    def label(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str],
              reward_fn: RewardFn) -> list[dict]:
        """Label each (prompt, A, B) triple; one TRL-style row per pair, in input order.

        Rows: ``prompt``, ``chosen``, ``rejected`` (the labeler's pick first), ``p_chosen`` (the
        probability the labeler gave to the one it chose), ``tie`` (bool), ``gold_chosen``,
        ``gold_rejected``. A tie row keeps the order the labeler drew (arbitrary; tie-aware losses
        are symmetric). There is deliberately no ``margin`` column: TRL's reward trainer would
        pick one up and use it as a Llama-2 margin, and a gold-derived margin would leak the gold
        reward into training. One random draw is made per pair, tie or not, so the labels do not
        depend on ``tie_margin`` except for the tie flag. ``reward_fn`` is called once, on
        ``prompts + prompts`` and ``responses_a + responses_b``.
        """
        n = len(prompts)
        if not (len(responses_a) == len(responses_b) == n):
            raise ValueError(f"prompts, responses_a and responses_b differ in length: "
                             f"{n}, {len(responses_a)}, {len(responses_b)}")
        if n == 0:
            return []
        prompts, responses_a, responses_b = list(prompts), list(responses_a), list(responses_b)
        gold = np.asarray(reward_fn(prompts + prompts, responses_a + responses_b), dtype=np.float64)
        if gold.shape != (2 * n,):
            raise ValueError(f"reward_fn returned {gold.shape[0] if gold.ndim else 'a scalar'} "
                             f"scores for {2 * n} completions")
        ga, gb = gold[:n], gold[n:]  # (n,) each
        length_diff = np.array([_n_words(a) - _n_words(b) for a, b in zip(responses_a, responses_b)])
        p_a = self.prob_a(ga, gb, length_diff)  # (n,)
        picks_a = self._rng.random(n) < p_a  # (n,)
        ties = np.abs(ga - gb) < self.tie_margin  # (n,)
        rows = []
        for i in range(n):
            a_first = bool(picks_a[i])
            rows.append({
                "prompt": prompts[i],
                "chosen": responses_a[i] if a_first else responses_b[i],
                "rejected": responses_b[i] if a_first else responses_a[i],
                "p_chosen": float(p_a[i] if a_first else 1.0 - p_a[i]),
                "tie": bool(ties[i]),
                "gold_chosen": float(ga[i] if a_first else gb[i]),
                "gold_rejected": float(gb[i] if a_first else ga[i]),
            })
        return rows


def make_preference_pairs(prompts: Sequence[str], samples_per_prompt: Sequence[Sequence[str]],
                          labeler: SimulatedLabeler, reward_fn: RewardFn, rng_seed: int,
                          pairs_per_prompt: int = 1) -> list[dict]:
    """Pick pairs of distinct responses for each prompt and have ``labeler`` label them.

    For each prompt, duplicate texts are dropped, then ``min(pairs_per_prompt, C(m, 2))``
    different unordered pairs of the m distinct responses are drawn uniformly without
    replacement, and each pair's A/B order is shuffled (the labeler has no position bias, but
    this keeps sample order out of the data). Prompts with fewer than two distinct responses
    give no pair. Pair selection uses its own generator (``rng_seed``), independent of the
    labeler's. Returns :meth:`SimulatedLabeler.label` rows, prompt by prompt.
    """
    if len(prompts) != len(samples_per_prompt):
        raise ValueError(f"{len(prompts)} prompts but {len(samples_per_prompt)} sample lists")
    if pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt must be >= 1, got {pairs_per_prompt}")
    rng = np.random.default_rng(rng_seed)
    ps: list[str] = []
    As: list[str] = []
    Bs: list[str] = []
    for prompt, samples in zip(prompts, samples_per_prompt):
        distinct = list(dict.fromkeys(samples))  # keeps first-seen order: deterministic
        m = len(distinct)
        if m < 2:
            continue
        n_pairs = m * (m - 1) // 2
        k = min(pairs_per_prompt, n_pairs)
        for code in rng.choice(n_pairs, size=k, replace=False):
            i, j = _unrank_pair(int(code), m)
            if rng.random() < 0.5:
                i, j = j, i
            ps.append(prompt)
            As.append(distinct[i])
            Bs.append(distinct[j])
    return labeler.label(ps, As, Bs, reward_fn)


def _unrank_pair(code: int, m: int) -> tuple[int, int]:
    """The code-th pair (i, j), i < j, of range(m) in lexicographic order."""
    i = 0
    while code >= m - 1 - i:
        code -= m - 1 - i
        i += 1
    return i, i + 1 + code


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n nats (Stiennon et al. 2020, appendix;
    Gao et al. 2022; RLHF-DETAILS item 27). It is an upper bound that is tight for a
    continuous reward with no ties among the n samples. ``best_of_n_kl(1) = 0``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


# ---------------------------------------------------------------------------------------------
# simulated annotators answering the feedback store's queue (`rlhf label simulate`)


def simulated_judgement(shown: Sequence[int], gold: Mapping[int, float], words: Mapping[int, int],
                        rng: np.random.Generator, *, temperature: float, position_bias: float = 0.0,
                        length_bias: float = 0.0, tie_threshold: float = 0.0,
                        strength_bins: Sequence[float] = (0.1, 0.3, 0.6), median: float = 0.0) -> dict:
    """What a simulated annotator submits for a task shown in the order ``shown`` (response ids).

    Returns keyword arguments for :meth:`FeedbackStore.submit` (``choice``/``strength`` for a pair,
    ``ranking`` for K > 2), always *relative to the shown order*, exactly as a person's are, so a
    position bias acts on what is on the left, not on the canonical order.

    Pair (left L, right R, ``d = g_L - g_R``): ``|d| < tie_threshold`` is a tie, ``tie_good`` when
    both rewards exceed ``median`` else ``tie_bad``; otherwise "A" (left) with probability
    ``sigmoid(d / T + position_bias + length_bias * (words_L - words_R))`` (``T = 0``: the higher
    reward, the biases only break exact ties). Strength is ``1 +`` the number of ``strength_bins``
    edges that ``|d|`` reaches, whichever side was picked (a confusable pair is a weak preference).
    One uniform draw per pair, tie or not, so the stream of draws does not depend on the threshold.

    K-way: a Plackett-Luce sample over utilities ``g / T + bias`` by the Gumbel-max trick (sort
    ``u_i + Gumbel_i``), where the position bias decays linearly from the first shown response
    (full) to the last (none), which for K = 2 is the pair rule. ``T = 0`` sorts by reward, then bias.
    Neighbours in the sampled order whose rewards differ by less than ``tie_threshold`` share a group.
    """
    shown = list(shown)
    k = len(shown)
    g = np.array([gold[i] for i in shown], dtype=np.float64)  # (K,)
    w = np.array([words[i] for i in shown], dtype=np.float64)  # (K,)
    if k == 2:
        d = float(g[0] - g[1])
        u = rng.random()
        strength = 1 + int(sum(abs(d) >= e for e in strength_bins))
        if abs(d) < tie_threshold:
            return {"choice": "tie_good" if min(g) > median else "tie_bad", "strength": None}
        bias = position_bias + length_bias * (w[0] - w[1])
        if temperature == 0:
            logit = math.copysign(math.inf, d) if d != 0 else bias
        else:
            logit = d / temperature + bias
        p_left = float(_sigmoid(np.array([logit]))[0])
        return {"choice": "A" if u < p_left else "B", "strength": strength}
    bias = position_bias * (1 - np.arange(k) / (k - 1)) + length_bias * w  # (K,)
    gumbel = rng.gumbel(size=k)  # (K,)
    if temperature == 0:
        order = sorted(range(k), key=lambda i: (-g[i], -bias[i], i))
    else:
        order = list(np.argsort(-(g / temperature + bias + gumbel), kind="stable"))
    groups: list[list[int]] = [[shown[order[0]]]]
    for prev, cur in zip(order, order[1:]):
        if abs(g[prev] - g[cur]) < tie_threshold:
            groups[-1].append(shown[cur])
        else:
            groups.append([shown[cur]])
    if len(groups) == 1:  # everything tied: the store needs an order; keep the sampled one
        groups = [[shown[i]] for i in order]
    return {"ranking": groups}


def load_reward_fn(spec: str) -> RewardFn:
    """``"gold"`` (the synthetic world's gold reward) or ``"module:function"``."""
    import importlib

    from rlhfkit.errors import ConfigError

    module, name = ("rlhfkit.synthetic.gold", "gold_reward_fn") if spec == "gold" else spec.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"reward: cannot load '{spec}': {e}") from None


def simulate_labels(cfg) -> dict:
    """`rlhf label simulate`: ``cfg.num_annotators`` simulated annotators work through the queue.

    Each is an annotator in the store (created if missing) and goes through ``next_task`` and
    ``submit`` like a person, in round-robin turns, until no annotator gets a task (or
    ``cfg.max_rounds``). The reward is computed once for every response of the project. Returns
    counts and the measured left-choice share and agreement with the reward ordering.
    """
    import json
    import secrets
    from pathlib import Path

    from rlhfkit.config import save_config
    from rlhfkit.feedback.store import FeedbackStore

    reward_fn = load_reward_fn(cfg.reward)
    store = FeedbackStore(cfg.store)
    try:
        store.get_project(cfg.project)  # NotFoundError naming the project
        tasks = store.tasks(cfg.project)
        texts: dict[int, tuple[str, str]] = {}
        for t in tasks:
            for rid, text in zip(t["response_ids"], t["texts"]):
                texts[rid] = (t["prompt"], text)
        ids = sorted(texts)
        scores = list(reward_fn([texts[i][0] for i in ids], [texts[i][1] for i in ids])) if ids else []
        if len(scores) != len(ids):
            from rlhfkit.errors import ConfigError
            raise ConfigError(f"reward '{cfg.reward}' returned {len(scores)} scores for {len(ids)} responses")
        gold = {i: float(s) for i, s in zip(ids, scores)}
        words = {i: _n_words(texts[i][1]) for i in ids}
        median = float(np.median(scores)) if scores else 0.0

        annotators = []
        for n in range(1, cfg.num_annotators + 1):
            name = f"{cfg.name_prefix}-{n}"
            # A random password nobody knows: simulated annotators never log in.
            annotators.append(store.get_annotator(name)
                              or store.add_annotator(name, secrets.token_urlsafe(24)))
        rngs = {a.id: np.random.default_rng([cfg.seed, n]) for n, a in enumerate(annotators)}
        kw = dict(temperature=cfg.temperature, position_bias=cfg.position_bias, length_bias=cfg.length_bias,
                  tie_threshold=cfg.tie_threshold, strength_bins=cfg.strength_bins, median=median)
        stats = {"judgements": 0, "ties": 0, "left": 0, "forced": 0, "agree": 0, "decided": 0}
        active = list(annotators)
        rounds = 0
        while active and rounds < cfg.max_rounds:
            rounds += 1
            for a in list(active):
                view = store.next_task(cfg.project, a.id)
                if view is None:
                    active.remove(a)
                    continue
                shown = [rid for rid, _ in view.responses]
                answer = simulated_judgement(shown, gold, words, rngs[a.id], **kw)
                store.submit(view.id, a.id, displayed_order=shown, **answer)
                stats["judgements"] += 1
                choice = answer.get("choice")
                if choice in ("tie_good", "tie_bad"):
                    stats["ties"] += 1
                elif choice is not None:
                    stats["forced"] += 1
                    stats["left"] += choice == "A"
                    picked, other = (shown[0], shown[1]) if choice == "A" else (shown[1], shown[0])
                    if gold[picked] != gold[other]:
                        stats["decided"] += 1
                        stats["agree"] += gold[picked] > gold[other]
        summary = {
            "project": cfg.project,
            "annotators": [a.name for a in annotators],
            "judgements": stats["judgements"],
            "ties": stats["ties"],
            "left_share": stats["left"] / stats["forced"] if stats["forced"] else None,
            "agreement_with_reward": stats["agree"] / stats["decided"] if stats["decided"] else None,
            "rounds": rounds,
            "progress": store.progress(cfg.project),
        }
    finally:
        store.close()
    save_config(cfg, cfg.output_dir)
    (Path(cfg.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
