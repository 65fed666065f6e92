"""Reward-model losses: Bradley-Terry with margins and weights, K-way rankings, ties, centering."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Reward-model losses (RLHF-DETAILS items 1, 5, 6)
#
# All of them take scalar rewards (the head's score at the last real token of each sequence) and
# compute in fp32 and in log-space: ``-logsigmoid(x) = softplus(-x)`` never overflows, where
# ``-log(sigmoid(x))`` gives inf for x below about -88 in fp32.
# ---------------------------------------------------------------------------------------------

TieModel = Literal["rao_kupper", "davidson"]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``sum(w * v) / sum(w)``, or the plain mean when ``weights`` is None."""
    if weights is None:
        return values.mean()
    w = weights.to(values)
    return (w * values).sum() / w.sum()


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | float | None = None,
                       weights: torch.Tensor | None = None,
                       confidence: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Pairwise Bradley-Terry reward-model loss, optionally with a Llama-2 margin and pair weights.

    Per pair ``l = -log sigmoid(r_c - r_r - m) = softplus(-(r_c - r_r - m))``, and
    ``loss = sum(w * l) / sum(w)`` (the plain mean when ``weights`` is None).

    * Bradley & Terry (1952); the RLHF reward-model loss of Ziegler et al. (2019), Stiennon et al.
      (2020) and Ouyang et al. (2022, eq. 1).
    * ``margin`` (Touvron et al. 2023, Llama 2, sec. 3.2.2): a per-pair offset (larger for
      "significantly better" labels) the chosen reward must clear; ``m = 0`` is plain BT. A
      positive margin makes every pair's loss larger.
    * ``weights``: per-pair weights; normalised by their sum so that the loss scale does not depend
      on the weights' scale.
    * ``confidence``: soft labels c = P(chosen is really better), e.g. the Dawid-Skene posterior of
      ``rlhf label export aggregate=dawid_skene`` (column ``label_confidence``). The pair's loss is
      the cross-entropy against the soft target,
      ``l = -[c log sigmoid(d - m) + (1 - c) log sigmoid(-d - m)]``, with ``d = r_c - r_r``: each
      direction must clear the margin when it is the better one, so c = 1 is exactly the hard loss
      above and c = 0.5 has zero gradient at d = 0 (for any m). It is minimised at
      ``sigmoid(d) = c`` without a margin: the reward learns the label's uncertainty instead of
      pushing every gap to infinity.

    Shapes: r_chosen, r_rejected (B,); margin (B,) or scalar; weights (B,); confidence (B,) in [0, 1].
    Metrics: ``accuracy`` = mean(r_c > r_r) (ties count as wrong), mean ``chosen_reward`` and
    ``rejected_reward``, and ``margin`` = mean(r_c - r_r) (the reward gap, not the Llama-2 margin).
    """
    r_c = r_chosen.float()  # (B,)
    r_r = r_rejected.float()  # (B,)
    diff = r_c - r_r  # (B,)
    m = 0.0 if margin is None else torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
    per_pair = F.softplus(-(diff - m))  # (B,) = -logsigmoid(d - m)
    if confidence is not None:
        c = confidence.to(diff)  # (B,)
        per_pair = c * per_pair + (1.0 - c) * F.softplus(diff + m)  # (B,) + -(1-c) logsigmoid(-d - m)
    loss = _weighted_mean(per_pair, weights)
    with torch.no_grad():
        metrics = {
            "accuracy": (diff > 0).float().mean().item(),
            "chosen_reward": r_c.mean().item(),
            "rejected_reward": r_r.mean().item(),
            "margin": diff.mean().item(),
        }
    return loss, metrics


def ranking_pair_indices(ranks: Sequence[int]) -> tuple[list[int], list[int]]:
    """All untied (better, worse) index pairs of one prompt's K ranked responses.

    ``ranks[i]`` is response i's rank with **lower = better** (0 or 1 for the best, as a labeler
    orders them from best to worst); equal ranks are a tie and give no pair. Pairs come in
    lexicographic order of (i, j), i < j, each oriented so that ``better[p]`` has the lower rank.
    E.g. ranks [0, 1, 1] -> better [0, 0], worse [1, 2] (the tied pair (1, 2) is dropped).
    """
    better: list[int] = []
    worse: list[int] = []
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if ranks[i] < ranks[j]:
                better.append(i)
                worse.append(j)
            elif ranks[j] < ranks[i]:
                better.append(j)
                worse.append(i)
    return better, worse


def ranking_tie_indices(ranks: Sequence[int]) -> tuple[list[int], list[int]]:
    """All tied index pairs ``(i, j)``, i < j, of one prompt's ranked responses (equal ranks), in
    lexicographic order: the pairs :func:`ranking_pair_indices` leaves out. E.g. ranks
    [0, 1, 1] -> ([1], [2]); a tied pair read as a ranking, [1, 1] -> ([0], [1])."""
    a: list[int] = []
    b: list[int] = []
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if ranks[i] == ranks[j]:
                a.append(i)
                b.append(j)
    return a, b


def ranking_batch(ranks_per_prompt: Sequence[Sequence[int]],
                  weighting: Literal["k_choose_2", "untied"] = "k_choose_2") -> dict[str, torch.Tensor]:
    """Index tensors for :func:`ranking_loss` over a batch of prompts with K_g ranked responses each.

    The responses are laid out flat, prompt after prompt (prompt g owns rows ``offset_g ..
    offset_g + K_g - 1`` of the reward vector), so each response is scored ONCE however many pairs
    it is in. Returns ``better`` (P,), ``worse`` (P,) as int64 indices into that flat vector,
    ``pair_weight`` (P,) float, ``group`` (P,) the prompt index of each pair, ``group_ids`` (N,)
    the prompt index of each response, and ``num_prompts`` (0-dim int64); and the tied pairs
    (equal ranks) for :func:`ranking_loss_with_ties`: ``tie_a``, ``tie_b`` (T,) int64 indices,
    ``tie_weight`` (T,) float and ``tie_group`` (T,). :func:`ranking_loss` ignores the tied pairs.

    Weighting (InstructGPT, Ouyang et al. 2022, sec. 3.5 and eq. 1: each prompt's C(K,2)
    comparisons form one batch element with weight 1/C(K,2), since shuffling them in as
    independent pairs overfit within an epoch):

    * ``"k_choose_2"`` (default, the paper's normalisation): every pair of prompt g weighs
      ``1/C(K_g, 2)`` whether or not some of its pairs are ties. A prompt therefore weighs at most 1,
      and less in proportion to the comparisons its ties removed: a ranking with ties says less
      about the order, and a fully tied prompt contributes 0 instead of a division by zero.
    * ``"untied"``: ``1/(number of untied pairs of g)``, so every prompt with at least one untied
      pair weighs exactly 1. This gives the single surviving comparison of a mostly tied (and
      likely noisy, near-indifferent) ranking the same total weight as a fully ordered ranking
      of K responses, which is why it is not the default.

    A tied pair weighs ``1/C(K_g, 2)`` under either weighting: when ties are fitted (Rao-Kupper /
    Davidson) it is one of the prompt's C(K_g, 2) comparisons like any other, so with the default
    weighting every prompt, fully tied ones included, weighs exactly 1; and a tied pair read as a
    2-way ranking weighs 1, as the tied pair does on the pair path.
    """
    if weighting not in ("k_choose_2", "untied"):
        raise ValueError(f"weighting must be 'k_choose_2' or 'untied', got {weighting!r}")
    better: list[int] = []
    worse: list[int] = []
    weight: list[float] = []
    group: list[int] = []
    group_ids: list[int] = []
    tie_a: list[int] = []
    tie_b: list[int] = []
    tie_weight: list[float] = []
    tie_group: list[int] = []
    offset = 0
    for g, ranks in enumerate(ranks_per_prompt):
        k = len(ranks)
        b, w = ranking_pair_indices(ranks)
        if b:
            denom = k * (k - 1) / 2 if weighting == "k_choose_2" else len(b)
            better += [offset + i for i in b]
            worse += [offset + j for j in w]
            weight += [1.0 / denom] * len(b)
            group += [g] * len(b)
        ta, tb = ranking_tie_indices(ranks)
        if ta:
            tie_a += [offset + i for i in ta]
            tie_b += [offset + j for j in tb]
            tie_weight += [1.0 / (k * (k - 1) / 2)] * len(ta)
            tie_group += [g] * len(ta)
        group_ids += [g] * k
        offset += k
    return {
        "better": torch.tensor(better, dtype=torch.long),  # (P,)
        "worse": torch.tensor(worse, dtype=torch.long),  # (P,)
        "pair_weight": torch.tensor(weight, dtype=torch.float32),  # (P,)
        "group": torch.tensor(group, dtype=torch.long),  # (P,)
        "group_ids": torch.tensor(group_ids, dtype=torch.long),  # (N,)
        "num_prompts": torch.tensor(len(ranks_per_prompt), dtype=torch.long),  # ()
        "tie_a": torch.tensor(tie_a, dtype=torch.long),  # (T,)
        "tie_b": torch.tensor(tie_b, dtype=torch.long),  # (T,)
        "tie_weight": torch.tensor(tie_weight, dtype=torch.float32),  # (T,)
        "tie_group": torch.tensor(tie_group, dtype=torch.long),  # (T,)
    }


def ranking_loss(rewards: torch.Tensor, better: torch.Tensor, worse: torch.Tensor,
                 pair_weight: torch.Tensor,
                 num_prompts: torch.Tensor | int | float) -> tuple[torch.Tensor, dict[str, float]]:
    """InstructGPT K-way ranking loss over a batch holding each prompt's K responses once.

    ``loss = sum_p w_p * -log sigmoid(r[better_p] - r[worse_p]) / num_prompts``
    (Ouyang et al. 2022, eq. 1, with ``w_p = 1/C(K,2)`` from :func:`ranking_batch`). With
    ``weighting="untied"`` weights and no fully tied prompt this is the mean over prompts of each
    prompt's mean pair loss; with the default ``1/C(K,2)`` a prompt with ties weighs less. Tied
    pairs carry no term here (ties dropped); :func:`ranking_loss_with_ties` fits them.

    ``num_prompts`` is a caller argument, not inferred, because a fully tied prompt has no pairs
    and still counts, and because under gradient accumulation / several processes the divisor
    should be the prompt count of the whole optimizer step (as ``sft_loss``'s ``num_tokens``).

    Shapes: rewards (N,) one score per response; better, worse (P,) int64 indices into rewards;
    pair_weight (P,). Metrics: ``accuracy`` (unweighted share of pairs ordered right, reward ties
    count as wrong), ``weighted_accuracy``, ``pairs``, ``margin`` (mean r_better - r_worse).
    """
    r = rewards.float()  # (N,)
    diff = r[better] - r[worse]  # (P,)
    w = pair_weight.to(diff)  # (P,)
    denom = torch.as_tensor(num_prompts, dtype=diff.dtype, device=diff.device).clamp(min=1)
    loss = (w * F.softplus(-diff)).sum() / denom
    with torch.no_grad():
        correct = (diff > 0).float()  # (P,)
        n = diff.numel()
        metrics = {
            "accuracy": correct.mean().item() if n else float("nan"),
            "weighted_accuracy": ((w * correct).sum() / w.sum()).item() if n else float("nan"),
            "pairs": float(n),
            "margin": diff.mean().item() if n else float("nan"),
        }
    return loss, metrics


def ranking_loss_with_ties(rewards: torch.Tensor, better: torch.Tensor, worse: torch.Tensor,
                           pair_weight: torch.Tensor, tie_a: torch.Tensor, tie_b: torch.Tensor,
                           tie_weight: torch.Tensor, num_prompts: torch.Tensor | int | float,
                           theta: torch.Tensor | float,
                           model: TieModel = "rao_kupper") -> tuple[torch.Tensor, dict[str, float]]:
    """The K-way ranking loss with ties fitted (Rao-Kupper or Davidson, :func:`tie_model_log_probs`):

    ``loss = (sum_p w_p * -log P(better_p > worse_p) + sum_t v_t * -log P(a_t ~ b_t)) / num_prompts``

    with the index tensors and weights of :func:`ranking_batch` (``w`` = ``pair_weight``, ``v`` =
    ``tie_weight``). It is :func:`bt_with_ties_loss` on rankings: a 2-way ranking with ranks
    [1, 2] gives ``-log P(win)`` and a tied pair read as a ranking ([1, 1]) ``-log P(tie)``, each
    with weight 1, so a batch of 2-way rankings has exactly the pair path's loss; a tie is never a
    win for either side, and wins use the tie model's win probability, not plain ``sigmoid(d)``.

    Shapes: rewards (N,); better, worse, pair_weight (P,); tie_a, tie_b, tie_weight (T,).
    Metrics: ``accuracy`` over untied pairs (nan if none), ``pairs`` and ``ties`` (counts),
    ``p_tie`` (mean over tied pairs, nan if none), ``margin`` (mean r_better - r_worse).
    """
    r = rewards.float()  # (N,)
    log_win, _, _ = tie_model_log_probs(r[better], r[worse], theta, model)  # (P,)
    _, _, log_tie = tie_model_log_probs(r[tie_a], r[tie_b], theta, model)  # (T,)
    w = pair_weight.to(r)  # (P,)
    v = tie_weight.to(r)  # (T,)
    denom = torch.as_tensor(num_prompts, dtype=r.dtype, device=r.device).clamp(min=1)
    loss = (-(w * log_win).sum() - (v * log_tie).sum()) / denom
    with torch.no_grad():
        diff = r[better] - r[worse]  # (P,)
        n, n_tie = diff.numel(), log_tie.numel()
        metrics = {
            "accuracy": (diff > 0).float().mean().item() if n else float("nan"),
            "pairs": float(n),
            "ties": float(n_tie),
            "p_tie": log_tie.exp().mean().item() if n_tie else float("nan"),
            "margin": diff.mean().item() if n else float("nan"),
        }
    return loss, metrics


def _check_tie_param(theta: torch.Tensor, model: str) -> None:
    if model == "rao_kupper":
        if bool((theta <= 1).any()):
            raise ValueError("Rao-Kupper needs theta > 1 (theta = 1 is plain Bradley-Terry, no ties)")
    elif model == "davidson":
        if bool((theta < 0).any()):
            raise ValueError("Davidson needs nu >= 0 (nu = 0 is plain Bradley-Terry, no ties)")
    else:
        raise ValueError(f"tie model must be 'rao_kupper' or 'davidson', got {model!r}")


def tie_model_log_probs(r_i: torch.Tensor, r_j: torch.Tensor, theta: torch.Tensor | float,
                        model: TieModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log P(i > j), log P(j > i), log P(i ~ j))`` under a Bradley-Terry model with ties.

    With ``pi = exp(r)`` and ``d = r_i - r_j``:

    * Rao & Kupper (1967), ``theta > 1``:
      ``P(i > j) = pi_i / (pi_i + theta pi_j) = sigmoid(d - log theta)``,
      ``P(tie) = (theta^2 - 1) pi_i pi_j / ((pi_i + theta pi_j)(pi_j + theta pi_i))``,
      so ``log P(tie) = log(theta^2 - 1) + logsigmoid(d - log theta) + logsigmoid(-d - log theta)``.
      ``theta -> 1`` recovers plain BT (P(tie) -> 0).
    * Davidson (1970), ``theta`` is nu ``>= 0``: with ``s = sqrt(pi_i pi_j)``,
      ``P(i > j) = pi_i / (pi_i + pi_j + nu s)``, ``P(tie) = nu s / (pi_i + pi_j + nu s)``;
      dividing by s, ``log Z = logsumexp(d/2, -d/2, log nu)``, ``log P(i > j) = d/2 - log Z``,
      ``log P(tie) = log nu - log Z``. ``nu -> 0`` recovers plain BT.

    The three probabilities sum to 1 in both models. Shapes: r_i, r_j (B,); theta scalar or (B,).
    """
    ri = r_i.float()  # (B,)
    rj = r_j.float()  # (B,)
    th = torch.as_tensor(theta, dtype=ri.dtype, device=ri.device)
    _check_tie_param(th, model)
    d = ri - rj  # (B,)
    if model == "rao_kupper":
        log_th = torch.log(th)
        log_win = F.logsigmoid(d - log_th)  # (B,)
        log_loss = F.logsigmoid(-d - log_th)  # (B,)
        log_tie = torch.log(th - 1) + torch.log(th + 1) + log_win + log_loss  # (B,)
    else:
        log_nu = torch.log(th).expand_as(d)  # (B,); -inf when nu = 0
        half = d / 2
        log_z = torch.logsumexp(torch.stack([half, -half, log_nu]), dim=0)  # (B,)
        log_win = half - log_z
        log_loss = -half - log_z
        log_tie = log_nu - log_z
    return log_win, log_loss, log_tie


def tie_loss(r_a: torch.Tensor, r_b: torch.Tensor, theta: torch.Tensor | float,
             model: TieModel = "rao_kupper",
             weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative log-likelihood of pairs labelled as ties: ``mean(-log P(a ~ b))``.

    ``theta`` is Rao-Kupper's theta (> 1) or Davidson's nu (>= 0); see :func:`tie_model_log_probs`
    for both formulas. Symmetric in a and b; minimised by equal rewards. Shapes: r_a, r_b (B,);
    weights (B,) optional, as in :func:`bradley_terry_loss`. Metrics: mean ``p_tie`` and mean
    ``abs_diff`` = |r_a - r_b|.
    """
    _, _, log_tie = tie_model_log_probs(r_a, r_b, theta, model)  # (B,)
    loss = _weighted_mean(-log_tie, weights)
    with torch.no_grad():
        metrics = {"p_tie": log_tie.exp().mean().item(),
                   "abs_diff": (r_a.float() - r_b.float()).abs().mean().item()}
    return loss, metrics


def bt_with_ties_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, is_tie: torch.Tensor,
                      theta: torch.Tensor | float, model: TieModel = "rao_kupper",
                      weights: torch.Tensor | None = None,
                      confidence: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Preference NLL where some pairs are ties: ``-log P(c > r)`` on wins, ``-log P(c ~ r)`` on ties.

    Both probabilities come from the same tie model (Rao-Kupper or Davidson, see
    :func:`tie_model_log_probs`), so a tie is never scored as a win for the "chosen" side (whose
    order is arbitrary in a tie row) and the win term uses the tie-aware win probability, not plain
    ``sigmoid(d)``. ``confidence`` (soft labels c, as in :func:`bradley_terry_loss`) makes a win row's
    term ``-[c log P(c > r) + (1 - c) log P(r > c)]``; tie rows ignore it.
    Shapes: r_chosen, r_rejected (B,); is_tie (B,) bool; weights, confidence (B,) optional.
    Metrics: ``accuracy`` = mean(r_c > r_r) over non-tie rows (nan if none), ``tie_fraction``,
    ``p_tie`` = mean tie probability over tie rows (nan if none), ``margin`` over non-tie rows.
    """
    log_win, log_loss, log_tie = tie_model_log_probs(r_chosen, r_rejected, theta, model)  # (B,) each
    tie = is_tie.to(device=log_win.device, dtype=torch.bool)  # (B,)
    if confidence is not None:
        c = confidence.to(log_win)  # (B,)
        log_win = c * log_win + (1.0 - c) * log_loss
    per_pair = -torch.where(tie, log_tie, log_win)  # (B,)
    loss = _weighted_mean(per_pair, weights)
    with torch.no_grad():
        diff = r_chosen.float() - r_rejected.float()  # (B,)
        win = ~tie
        n_win, n_tie = int(win.sum()), int(tie.sum())
        metrics = {
            "accuracy": (diff[win] > 0).float().mean().item() if n_win else float("nan"),
            "tie_fraction": n_tie / max(tie.numel(), 1),
            "p_tie": log_tie[tie].exp().mean().item() if n_tie else float("nan"),
            "margin": diff[win].mean().item() if n_win else float("nan"),
        }
    return loss, metrics


def reward_centering_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, coef: float) -> torch.Tensor:
    """Auxiliary loss ``coef * mean((r_c + r_r)^2)`` that keeps rewards centred on 0.

    The BT loss only sees differences, so the reward's offset is unidentified and can drift; this
    pins the pair sum near 0 (Eisenstein et al. 2023, "Helping or Herding?", reward centering;
    coef about 0.01). It does not replace normalising the reward on policy samples before RL
    (RLHF-DETAILS item 5). Shapes: r_chosen, r_rejected (B,). Returns a 0-dim tensor.
    """
    s = r_chosen.float() + r_rejected.float()  # (B,)
    return coef * (s * s).mean()
