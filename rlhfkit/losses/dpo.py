"""The DPO family: sigmoid (DPO), IPO, cDPO, hinge (SLiC), SimPO, plus RPO's NLL term."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

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
             num_pairs: torch.Tensor | float | None = None,
             confidence: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO family on summed response log-probs; see the block comment above for h.

    Per pair: sigmoid ``-log sigmoid(beta h)``; cdpo ``-(1-eps) log sigmoid(beta h) - eps log
    sigmoid(-beta h)`` with ``eps = label_smoothing``; hinge ``relu(1 - beta h)``; ipo
    ``(h - 1/(2 beta))^2`` with length-normalised h; simpo ``-log sigmoid(beta h - gamma)``,
    reference-free and length-normalised.

    ``rpo_alpha > 0`` adds an NLL (SFT) term on the chosen response, as in RPO (Pang et al.
    2024): ``rpo_alpha * (-logp_c / n_c)`` per pair, the chosen response's NLL per token (each
    response normalised by its own length, so the term is a per-pair quantity like the rest).

    ``confidence`` (B,): soft labels c = P(chosen is really better), e.g. the Dawid-Skene posterior
    of ``rlhf label export aggregate=dawid_skene``; sigmoid and cdpo only. Each pair becomes conservative
    DPO (Mitchell 2023) with its own flip probability ``eps_i = 1 - c_i``, i.e. the cross-entropy
    against the soft target, ``-(c log sigmoid(beta h) + (1 - c) log sigmoid(-beta h))``: c = 1 is
    plain DPO exactly, c = 0.5 has zero gradient. With cdpo's ``label_smoothing`` eps0 as well the two
    compose as independent flips: ``eps = eps0 (1 - eps_i) + eps_i (1 - eps0)`` (eps0 then models
    noise the aggregation did not see, e.g. a bias every annotator shares).

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
    if confidence is not None and loss_type not in ("sigmoid", "cdpo"):
        raise ValueError(f"confidence (soft labels) applies to loss_type 'sigmoid' and 'cdpo' only, not "
                         f"{loss_type!r}")
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
    if confidence is not None:
        eps_i = 1.0 - confidence.to(h)  # (B,) per-pair flip probability
        eps = label_smoothing * (1.0 - eps_i) + eps_i * (1.0 - label_smoothing)  # (B,)
        per_pair = _dpo_cdpo(h, beta, eps, gamma)  # (B,)
    else:
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
