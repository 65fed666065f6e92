"""Losses: pure tensor functions, tensors in, ``(loss, metrics)`` out.

No model or config objects enter here, so every loss is tested against values computed by hand
(a flipped sign or a wrong normalisation fails a test, not a training run). Later stages add
their losses (Bradley-Terry, DPO family, PPO) to this module.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token negative log-likelihood summed over the labelled positions.

    logits: (B, T, V) from a causal LM; labels: (B, T) token ids with ``IGNORE_INDEX`` where no
    loss is taken (prompt, padding). Position t predicts labels[t + 1], so the last logit and the
    first label are dropped. Returns (sum of NLL over labelled tokens, number of labelled tokens)
    so the caller can normalise by the token count of the *whole* accumulated, all-process batch:
    averaging per micro-batch instead would weight tokens of short micro-batches more and break
    "gradient accumulation == bigger batch".
    """
    shift_logits = logits[:, :-1, :].float()  # (B, T-1, V); fp32 for a stable log-softmax
    shift_labels = labels[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")
    n_tokens = (shift_labels != IGNORE_INDEX).sum()
    return nll, n_tokens


def sft_loss(logits: torch.Tensor, labels: torch.Tensor,
             num_tokens: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked SFT loss: NLL summed over labelled tokens divided by ``num_tokens``.

    ``num_tokens`` defaults to this batch's labelled-token count (a plain token mean); training
    loops pass the count over the whole optimizer step (all micro-batches, all processes).
    """
    nll, n = token_nll(logits, labels)
    denom = n if num_tokens is None else num_tokens
    denom = torch.as_tensor(denom, dtype=nll.dtype, device=nll.device).clamp(min=1)
    loss = nll / denom
    return loss, {"nll_sum": nll.item(), "tokens": int(n)}


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
                       weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Pairwise Bradley-Terry reward-model loss, optionally with a Llama-2 margin and pair weights.

    Per pair ``l = -log sigmoid(r_c - r_r - m) = softplus(-(r_c - r_r - m))``, and
    ``loss = sum(w * l) / sum(w)`` (the plain mean when ``weights`` is None).

    * Bradley & Terry (1952); the RLHF reward-model loss of Ziegler et al. (2019), Stiennon et al.
      (2020) and Ouyang et al. (2022, eq. 1).
    * ``margin`` (Touvron et al. 2023, Llama 2, sec. 3.2.2): a per-pair offset (larger for
      "significantly better" labels) the chosen reward must clear; ``m = 0`` is plain BT. A
      positive margin makes every pair's loss larger.
    * ``weights``: per-pair weights, e.g. label confidence; normalised by their sum so that the
      loss scale does not depend on the weights' scale.

    Shapes: r_chosen, r_rejected (B,); margin (B,) or scalar; weights (B,).
    Metrics: ``accuracy`` = mean(r_c > r_r) (ties count as wrong), mean ``chosen_reward`` and
    ``rejected_reward``, and ``margin`` = mean(r_c - r_r) (the reward gap, not the Llama-2 margin).
    """
    r_c = r_chosen.float()  # (B,)
    r_r = r_rejected.float()  # (B,)
    diff = r_c - r_r  # (B,)
    logits = diff if margin is None else diff - torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
    per_pair = F.softplus(-logits)  # (B,) = -logsigmoid(logits)
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
                      weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Preference NLL where some pairs are ties: ``-log P(c > r)`` on wins, ``-log P(c ~ r)`` on ties.

    Both probabilities come from the same tie model (Rao-Kupper or Davidson, see
    :func:`tie_model_log_probs`), so a tie is never scored as a win for the "chosen" side (whose
    order is arbitrary in a tie row) and the win term uses the tie-aware win probability, not plain
    ``sigmoid(d)``. Shapes: r_chosen, r_rejected (B,); is_tie (B,) bool; weights (B,) optional.
    Metrics: ``accuracy`` = mean(r_c > r_r) over non-tie rows (nan if none), ``tie_fraction``,
    ``p_tie`` = mean tie probability over tie rows (nan if none), ``margin`` over non-tie rows.
    """
    log_win, _, log_tie = tie_model_log_probs(r_chosen, r_rejected, theta, model)  # (B,) each
    tie = is_tie.to(device=log_win.device, dtype=torch.bool)  # (B,)
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


# ---------------------------------------------------------------------------------------------
# DPO family (RLHF-DETAILS items 22-26): rlhf dpo
#
# Inputs are per-pair SUMMED response log-probs (prompt masked, EOS included): the policy's
# ``policy_chosen``/``policy_rejected`` (B,) and the frozen reference's ``ref_chosen``/
# ``ref_rejected`` (B,), plus the response token counts ``chosen_tokens``/``rejected_tokens`` (B,)
# for the length-normalised variants. Each variant is a function of one per-pair scalar h:
#
#   sigmoid, cdpo, hinge:  h = (logp_c - ref_c) - (logp_r - ref_r)              summed log-ratios
#   ipo:                   h = (logp_c - ref_c)/n_c - (logp_r - ref_r)/n_r      length-normalised
#   simpo:                 h = logp_c/n_c - logp_r/n_r                           no reference
#
# IPO is length-normalised here, as in TRL and as the IPO authors confirmed their experiments were
# run: with summed log-ratios the squared loss's target 1/(2 beta) would mean different things for
# 5- and 50-token responses. Averaging plain DPO is a different loss; it is offered only under the
# name it has in the literature (SimPO, reference-free), never as "sigmoid".
# ---------------------------------------------------------------------------------------------

DPOLossType = Literal["sigmoid", "ipo", "cdpo", "hinge", "simpo"]

# Which variants divide by the response length, and which ignore the reference model.
DPO_LENGTH_NORMALISED = frozenset({"ipo", "simpo"})
DPO_REFERENCE_FREE = frozenset({"simpo"})


def _dpo_sigmoid(h: torch.Tensor, beta: float, eps: float, gamma: float) -> torch.Tensor:
    # Rafailov et al. 2023, eq. 7: -log sigmoid(beta h) = softplus(-beta h) (no overflow).
    return F.softplus(-beta * h)


def _dpo_cdpo(h: torch.Tensor, beta: float, eps: float, gamma: float) -> torch.Tensor:
    # Conservative DPO (Mitchell 2023): the label is flipped with probability eps, so the loss is
    # the expected BCE, -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h) (item 24).
    return (1.0 - eps) * F.softplus(-beta * h) + eps * F.softplus(beta * h)


def _dpo_hinge(h: torch.Tensor, beta: float, eps: float, gamma: float) -> torch.Tensor:
    # SLiC-HF (Zhao et al. 2023) calibration loss on the DPO log-ratio: relu(1 - beta h).
    return torch.relu(1.0 - beta * h)


def _dpo_ipo(h: torch.Tensor, beta: float, eps: float, gamma: float) -> torch.Tensor:
    # IPO (Azar et al. 2023, eq. 17, beta = their tau): regress h to 1/(2 beta) instead of pushing
    # it to infinity, so deterministic preferences do not drive the policy away from the reference.
    return (h - 1.0 / (2.0 * beta)) ** 2


def _dpo_simpo(h: torch.Tensor, beta: float, eps: float, gamma: float) -> torch.Tensor:
    # SimPO (Meng et al. 2024, eq. 6): -log sigmoid(beta h - gamma), h from mean token log-probs
    # of the policy alone; gamma is the target reward margin on the beta-scaled scale.
    return F.softplus(-(beta * h - gamma))


_DPO_PER_PAIR = {"sigmoid": _dpo_sigmoid, "cdpo": _dpo_cdpo, "hinge": _dpo_hinge, "ipo": _dpo_ipo,
                 "simpo": _dpo_simpo}


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor | None = None, ref_rejected: torch.Tensor | None = None, *,
             loss_type: DPOLossType = "sigmoid", beta: float = 0.1, label_smoothing: float = 0.0,
             gamma: float = 0.0, chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None, rpo_alpha: float = 0.0,
             num_pairs: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO family on summed response log-probs; see the block comment above for h.

    Per pair: sigmoid ``-log sigmoid(beta h)``; cdpo ``-(1-eps) log sigmoid(beta h) - eps log
    sigmoid(-beta h)`` with ``eps = label_smoothing``; hinge ``relu(1 - beta h)``; ipo
    ``(h - 1/(2 beta))^2`` with length-normalised h; simpo ``-log sigmoid(beta h - gamma)``,
    reference-free and length-normalised.

    ``rpo_alpha > 0`` adds an NLL (SFT) term on the chosen response, as in RPO (Pang et al.
    2024): ``rpo_alpha * (-logp_c / n_c)`` per pair, the chosen response's NLL per token (each
    response normalised by its own length, so the term is a per-pair quantity like the rest).

    ``loss = sum over pairs of (pair loss + rpo term) / num_pairs``; ``num_pairs`` defaults to B,
    and training loops pass the pair count of the whole optimizer step (all micro-batches and
    processes), so accumulation and process count do not change the loss.

    Shapes: every tensor argument (B,). ``ref_*`` may be None only for simpo; token counts are
    needed for ipo, simpo and rpo_alpha > 0. ``label_smoothing`` must be 0 unless cdpo and
    ``gamma`` 0 unless simpo (a value that would be silently ignored is an error).

    Metrics (means over the pairs): ``rewards/chosen`` and ``rewards/rejected`` -- the implicit
    rewards ``beta * (logp - ref)`` on SUMMED log-probs for every reference-based variant (so runs
    with different loss types are comparable), ``beta * logp / n`` for simpo; ``margins`` = chosen
    minus rejected reward; ``accuracy`` = share of pairs with margin > 0; ``logps/chosen`` and
    ``logps/rejected`` (summed policy log-probs); ``nll`` when ``rpo_alpha > 0``.
    """
    if loss_type not in _DPO_PER_PAIR:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {', '.join(_DPO_PER_PAIR)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if label_smoothing and loss_type != "cdpo":
        raise ValueError(f"label_smoothing applies to loss_type 'cdpo' only, not {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if gamma and loss_type != "simpo":
        raise ValueError(f"gamma (the SimPO margin) applies to loss_type 'simpo' only, not {loss_type!r}")
    reference_free = loss_type in DPO_REFERENCE_FREE
    if not reference_free and (ref_chosen is None or ref_rejected is None):
        raise ValueError(f"loss_type {loss_type!r} needs the reference log-probs ref_chosen/ref_rejected")
    needs_counts = loss_type in DPO_LENGTH_NORMALISED or rpo_alpha > 0
    if needs_counts and (chosen_tokens is None or rejected_tokens is None):
        raise ValueError(f"loss_type {loss_type!r} (or rpo_alpha > 0) needs chosen_tokens and "
                         "rejected_tokens")

    pc, pr = policy_chosen.float(), policy_rejected.float()  # (B,) summed log-probs
    if reference_free:
        dc, dr = pc, pr
    else:
        dc, dr = pc - ref_chosen.float(), pr - ref_rejected.float()  # (B,) log-ratios
    if needs_counts:
        nc = chosen_tokens.to(pc).clamp(min=1)  # (B,)
        nr = rejected_tokens.to(pc).clamp(min=1)  # (B,)
    if loss_type in DPO_LENGTH_NORMALISED:
        h = dc / nc - dr / nr  # (B,)
    else:
        h = dc - dr  # (B,)
    per_pair = _DPO_PER_PAIR[loss_type](h, beta, label_smoothing, gamma)  # (B,)
    if rpo_alpha > 0:
        nll = -pc / nc  # (B,) chosen NLL per token
        per_pair = per_pair + rpo_alpha * nll
    denom = per_pair.numel() if num_pairs is None else num_pairs
    denom = torch.as_tensor(denom, dtype=per_pair.dtype, device=per_pair.device).clamp(min=1)
    loss = per_pair.sum() / denom

    with torch.no_grad():
        if reference_free:
            r_c, r_r = beta * pc / nc, beta * pr / nr  # (B,) SimPO's length-normalised rewards
        else:
            r_c, r_r = beta * dc, beta * dr  # (B,) DPO implicit rewards (summed)
        margins = r_c - r_r
        metrics = {
            "rewards/chosen": r_c.mean().item(),
            "rewards/rejected": r_r.mean().item(),
            "margins": margins.mean().item(),
            "accuracy": (margins > 0).float().mean().item(),
            "logps/chosen": pc.mean().item(),
            "logps/rejected": pr.mean().item(),
        }
        if rpo_alpha > 0:
            metrics["nll"] = nll.mean().item()
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# PPO losses (RLHF-DETAILS items 12, 15, 19; Schulman et al. 2017; "The N+ Implementation
# Details of RLHF with PPO", Huang et al. 2024)
#
# Per-token tensors are (B, T) with a 0/1 response ``mask`` (tokens after the first EOS and the
# prompt are 0, so they contribute nothing to the loss or to any metric). Losses are token means
# over the mask; ``num_tokens`` replaces the denominator with the token count of the whole
# optimizer step (all micro-batches and processes), as in ``sft_loss``.
# ---------------------------------------------------------------------------------------------

from rlhfkit.logprobs import masked_mean  # torch-only module: the one shared masked mean


def _token_mean(x: torch.Tensor, mask: torch.Tensor, num_tokens: torch.Tensor | float | None) -> torch.Tensor:
    if num_tokens is None:
        return masked_mean(x, mask)
    denom = torch.as_tensor(num_tokens, dtype=x.dtype, device=x.device).clamp(min=1)
    return (x * mask.to(x.dtype)).sum() / denom


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2,
                    num_tokens: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate: ``mean_t max(-A_t rho_t, -A_t clip(rho_t, 1-clip, 1+clip))``.

    ``rho_t = exp(logp_t - old_logp_t)``; logp (with grad) and old_logp (the rollout's) are both
    temperature-scaled (item 12), so on the first minibatch of the first epoch rho = 1 and the
    loss is ``-mean(A)``. Shapes: all (B, T).

    Metrics (masked token means): ``clipfrac`` = share of tokens where the clipped term is the
    larger one, i.e. whose gradient clipping removes (the TRL / OpenAI definition; 0 at rho = 1);
    ``approx_kl`` = ``0.5 * mean((logp - old_logp)^2)`` (k2 between the old and current policy);
    ``ratio`` = mean rho.
    """
    m = mask.to(torch.float32)
    # Zero the log-ratio off the mask before exp: a padded position holding -inf or a large
    # log-prob would give inf * 0 = nan in the masked mean.
    log_ratio = torch.where(m.bool(), logp.float() - old_logp.float(), 0.0)  # (B, T)
    ratio = torch.exp(log_ratio)
    adv = torch.where(m.bool(), advantages.float(), 0.0)
    unclipped = -adv * ratio  # (B, T)
    clipped = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = _token_mean(torch.maximum(unclipped, clipped), m, num_tokens)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).float(), m).item(),
            "approx_kl": (0.5 * masked_mean(log_ratio ** 2, m)).item(),
            "ratio": masked_mean(ratio, m).item(),
        }
    return loss, metrics


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, clip: float = 0.2,
                   num_tokens: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss (item 15): ``0.5 * mean_t max((V - R)^2, (V_clip - R)^2)`` with
    ``V_clip = old_V + clip(V - old_V, -clip, clip)``, so one update cannot move a value
    estimate further than ``clip`` from the rollout's. Shapes: all (B, T).

    Metrics: ``vf_clipfrac`` = share of tokens where the clipped term is the larger one;
    ``value`` = mean V; ``value_error`` = mean (V - R)^2.
    """
    m = mask.to(torch.float32)
    v, old, ret = values.float(), old_values.float(), returns.float()
    v_clipped = old + torch.clamp(v - old, -clip, clip)  # (B, T)
    sq = (v - ret) ** 2
    sq_clipped = (v_clipped - ret) ** 2
    loss = 0.5 * _token_mean(torch.maximum(sq, sq_clipped), m, num_tokens)
    with torch.no_grad():
        metrics = {"vf_clipfrac": masked_mean((sq_clipped > sq).float(), m).item(),
                   "value": masked_mean(v, m).item(), "value_error": masked_mean(sq, m).item()}
    return loss, metrics


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, T, V) logits -> (B, T) entropy of the temperature-scaled softmax, in fp32:
    ``H = logsumexp(z) - sum_v softmax(z)_v z_v`` (one softmax, no log of small probabilities)."""
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)
