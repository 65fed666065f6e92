"""Per-token KL estimators and KL-coefficient controllers (RLHF-DETAILS items 16 and 20).

The tokens are sampled from the policy, so with ``r = p_ref / p_policy`` (``log r = ref_logp -
logp``) each estimator's expectation under the policy relates to KL(policy || ref) (Schulman,
"Approximating KL divergence", 2020):

- k1 = -log r: unbiased, high variance, negative on individual tokens. The classic PPO-RLHF
  penalty in the reward (Ziegler et al. 2019; InstructGPT).
- k2 = 0.5 (log r)^2: biased, low variance, never negative.
- k3 = (r - 1) - log r: unbiased, low variance, never negative (r - 1 >= log r). GRPO adds it as
  a loss term; note that the *gradient* of k3 used as a loss is not an unbiased gradient of KL.
"""

from __future__ import annotations

from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]


def _log_ratio(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    # log r = log p_ref - log p_policy, in fp32 so k3's exp does not lose precision in bf16.
    return ref_logp.float() - logp.float()


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = -log r = logp - ref_logp, elementwise (same shape as the inputs, e.g. (B, T-1))."""
    return -_log_ratio(logp, ref_logp)


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 (log r)^2, elementwise."""
    return 0.5 * _log_ratio(logp, ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r, elementwise; >= 0 for every token."""
    log_r = _log_ratio(logp, ref_logp)
    # expm1 is exact for small log r (r - 1 ~ log r near the reference), where exp(x) - 1 cancels.
    return torch.expm1(log_r) - log_r


_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Dispatch on the estimator's name; the caller masks the result with the response mask."""
    if estimator not in _ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of k1, k2, k3")
    return _ESTIMATORS[estimator](logp, ref_logp)


class FixedKLController:
    """A constant KL coefficient beta (0.02-0.05 in the literature). Same interface as the
    adaptive one, so the training loop calls ``update`` unconditionally."""

    def __init__(self, beta: float):
        if beta < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {beta}")
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. (2019), sec. 2.2: steer the sequence KL towards ``target``.

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + e * n_steps / horizon)``.
    ``current_kl`` is the mean sequence KL of the batch (sum over response tokens of
    logp - ref_logp) and ``n_steps`` the number of episodes in it, so the correction rate is per
    episode and does not depend on the batch size.
    """

    def __init__(self, init_beta: float, target: float, horizon: float):
        if init_beta <= 0 or target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL control needs init_beta, target and horizon > 0")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        # Everything needed for `resume` to continue with the same coefficient trajectory.
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])
