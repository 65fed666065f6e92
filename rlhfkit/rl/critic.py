"""PPO critics behind one interface: per-token values of a rollout, and the value loss of a minibatch.

Two kinds (RLHF-DETAILS item 17):
- :class:`SeparateCritic`: its own network (``AutoModelForSequenceClassification`` initialised from
  the reward model, or from the policy with a small fresh head), its own AdamW and schedule; after
  each policy step it takes one value step on the same minibatch.
- :class:`HeadCritic`: a linear head on the policy's last hidden states (:class:`PolicyWithValueHead`);
  one forward gives logits and values, and ``vf_coef`` * value loss joins the policy loss, so the
  policy's optimizer trains both.

Values are (B, T-1), aligned with token log-probs: the value of position t predicts the return
from token t+1 on. A reward model's stored offset / scale are applied (item 5), so initial values
are on the reward's scale.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rlhfkit.losses import ppo_value_loss
from rlhfkit.modeling import REWARD_OFFSET, REWARD_SCALE, reward_head


class ValueModel(nn.Module):
    """Per-token values from a sequence-classification model: its scalar head on every position
    of the trunk's last hidden states."""

    def __init__(self, seq_cls_model):
        super().__init__()
        self.net = seq_cls_model  # the head is looked up, not stored twice (shared tensors)
        self.register_buffer("offset", torch.tensor(float(getattr(seq_cls_model.config, REWARD_OFFSET, 0.0))))
        self.register_buffer("scale", torch.tensor(float(getattr(seq_cls_model.config, REWARD_SCALE, 1.0))))

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        trunk = getattr(self.net, self.net.base_model_prefix)
        h = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False).last_hidden_state
        v = (reward_head(self.net)(h).squeeze(-1).float() - self.offset) / self.scale
        return v[:, :-1]  # (B, T-1), aligned with token log-probs


class PolicyWithValueHead(nn.Module):
    """The policy plus a scalar value head on its last hidden states (``critic: policy_head``)."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        d = policy.config.hidden_size
        self.v_head = nn.Linear(d, 1)
        nn.init.normal_(self.v_head.weight, std=1 / math.sqrt(d + 1))
        nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids, attention_mask, position_ids, use_cache: bool = False, **kw):
        # kw: logits_to_keep (logprobs.logits_window); the hidden states stay full length
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=True, use_cache=False, **kw)
        h = out.hidden_states[-1]
        v = self.v_head(h.to(self.v_head.weight.dtype)).squeeze(-1).float()
        return out.logits, v[:, :-1]  # values aligned with token log-probs


def policy_forward(policy, input_ids, attention_mask, position_ids,
                   **kw) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits (B, T, V) -- (B, T - start, V) with ``logits_to_keep`` in ``kw`` --, values
    (B, T-1) or None): one forward of the policy being trained."""
    out = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 use_cache=False, **kw)
    return (out[0], out[1]) if isinstance(out, tuple) else (out.logits, None)


class SeparateCritic:
    def __init__(self, model, optimizer, scheduler):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    @torch.no_grad()
    def values(self, policy, ro) -> torch.Tensor:
        return self.model(ro.input_ids, ro.attention_mask, ro.position_ids)

    def joint_loss(self, v, old_values, returns, mask, **kw):
        """Nothing joins the policy loss: this critic takes its own step (:meth:`step`)."""
        return None, {}

    def step(self, acc, run_state, step: int, ro, mb, old_values, returns, mask, *, clip: float,
             num_tokens, max_grad_norm) -> dict[str, float]:
        from rlhfkit.train.common import clip_and_step

        v = self.model(ro.input_ids[mb], ro.attention_mask[mb], ro.position_ids[mb])
        v_loss, vm = ppo_value_loss(v, old_values, returns, mask, clip=clip, num_tokens=num_tokens)
        acc.backward(v_loss)
        if clip_and_step(acc, self.model, self.optimizer, self.scheduler, max_grad_norm) is None:
            run_state.nonfinite(step, v_loss.item())
        return {**vm, "vf_loss": v_loss.item()}


class HeadCritic:
    def __init__(self, vf_coef: float):
        self.vf_coef = vf_coef

    @torch.no_grad()
    def values(self, policy, ro) -> torch.Tensor:
        return policy(ro.input_ids, ro.attention_mask, ro.position_ids)[1]

    def joint_loss(self, v, old_values, returns, mask, *, clip: float, num_tokens):
        """``vf_coef`` * clipped value loss, added to the policy loss (one backward, one optimizer)."""
        v_loss, vm = ppo_value_loss(v, old_values, returns, mask, clip=clip, num_tokens=num_tokens)
        return self.vf_coef * v_loss, {**vm, "vf_loss": v_loss.item()}

    def step(self, *args, **kwargs) -> dict[str, float]:
        return {}
