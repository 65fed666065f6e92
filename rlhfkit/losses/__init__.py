"""Losses: pure tensor functions, tensors in, ``(loss, metrics)`` out.

No model or config objects enter here, so every loss is tested against values computed by hand
(a flipped sign or a wrong normalisation fails a test, not a training run). One module a family:
``sft`` (token NLL), ``preference`` (reward models: Bradley-Terry, rankings, ties, centering),
``dpo`` (the DPO family), ``ppo`` (clipped surrogate, value loss, entropy). A new loss goes into
its family's module as a pure function with a hand-computed test, and is re-exported here.
"""

from rlhfkit.losses.dpo import DPO_LENGTH_NORMALISED, DPO_REFERENCE_FREE, DPOLossType, dpo_loss
from rlhfkit.losses.ppo import entropy_from_logits, ppo_policy_loss, ppo_value_loss
from rlhfkit.losses.preference import (TieModel, bradley_terry_loss, bt_with_ties_loss, ranking_batch,
                                       ranking_loss, ranking_loss_with_ties, ranking_pair_indices,
                                       ranking_tie_indices, reward_centering_loss, tie_loss,
                                       tie_model_log_probs)
from rlhfkit.losses.sft import IGNORE_INDEX, sft_loss, token_nll

__all__ = ["DPO_LENGTH_NORMALISED", "DPO_REFERENCE_FREE", "DPOLossType", "IGNORE_INDEX", "TieModel",
           "bradley_terry_loss", "bt_with_ties_loss", "dpo_loss", "entropy_from_logits", "ppo_policy_loss",
           "ppo_value_loss", "ranking_batch", "ranking_loss", "ranking_loss_with_ties",
           "ranking_pair_indices", "ranking_tie_indices", "reward_centering_loss", "sft_loss", "tie_loss",
           "tie_model_log_probs", "token_nll"]
