"""Online-RL mechanics shared by PPO, RLOO and GRPO (RLHF-DETAILS items 8-21).

- :mod:`rlhfkit.rl.rollout`: batched sampling from left-padded prompts, truncation after the
  first EOS, response masks and temperature-scaled log-probs of the sampled tokens.
- :mod:`rlhfkit.rl.kl`: the k1/k2/k3 per-token KL estimators and the fixed / adaptive (Ziegler
  et al. 2019) KL-coefficient controllers.
- :mod:`rlhfkit.rl.advantages`: per-token rewards, GAE, masked whitening, and the critic-free
  RLOO and GRPO baselines.

Everything here except the rollout is a pure tensor function; the PPO policy / value losses live
with the other losses in :mod:`rlhfkit.losses`. Conventions: per-token tensors are (B, T-1) and
aligned with ``input_ids[:, 1:]`` like :func:`rlhfkit.logprobs.token_logprobs`, or any (B, T)
layout as long as the mask is sliced the same way; a mask is 1 on response tokens (up to and
including the first EOS) and 0 on the prompt and on padding.
"""
