"""Scoring text with reward models: the one place that turns (prompt, response) into a reward.

Used by `rlhf score`, by reward-model evaluation and, later, by RL stages. It applies the
normalisation a reward stage stored in the model's config (``reward_offset``/``reward_scale``:
reward = (raw - offset) / scale), so every consumer sees rewards on the same scale, and it
handles ensembles (``ensemble.json`` next to the first member lists the others): the score is
the members' mean and ``std`` their disagreement.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from rlhfkit.data.collate import encode_prompt_response, response_batch
from rlhfkit.data.padding_free import is_padding_free, packed_inputs
from rlhfkit.errors import ModelError
from rlhfkit.modeling import REWARD_OFFSET, REWARD_SCALE, load_reward_model, load_tokenizer, reward_head

log = logging.getLogger(__name__)


def ensemble_members(model_dir: str | Path) -> list[Path]:
    """The member directories of a reward model: itself, plus those its ensemble.json lists."""
    root = Path(model_dir)
    spec = root / "ensemble.json"
    extra = [(root / p).resolve() for p in json.loads(spec.read_text())["members"]] if spec.is_file() else []
    return [root, *extra]


@torch.no_grad()
def raw_rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) un-normalised scores, without gradients (see `batch_rewards`)."""
    return batch_rewards(model, batch)


def batch_rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) un-normalised fp32 scores of a padded batch (the model pools at the last non-pad token
    of each row), or (N,) of a padding-free one (read at each example's last token)."""
    if is_padding_free(batch):
        return _packed_rewards(model, batch)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False)
    return out.logits[:, 0].float()


def _packed_rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scores of a padding-free (R, W) batch. A sequence-classification model pools ONE score per
    row, so the head's per-token output (R, W, 1) is caught by a forward hook and read at each
    example's last token (``last_index``, flat row * W + column)."""
    caught: list[torch.Tensor] = []
    head = reward_head(getattr(model, "module", model))
    handle = head.register_forward_hook(lambda _m, _i, out: caught.append(out))
    try:
        model(**packed_inputs(model, batch), use_cache=False)
    finally:
        handle.remove()
    rows, width = batch["input_ids"].shape
    if len(caught) != 1 or tuple(caught[0].shape) != (rows, width, 1):
        raise ModelError(f"padding_free: cannot read per-token scores of {type(model).__name__} (its head "
                         f"gave {[tuple(c.shape) for c in caught]}, expected one {(rows, width, 1)}); "
                         "set padding_free: false")
    return caught[0].reshape(-1)[batch["last_index"]].float()  # (N,)


def score_encoded(model, pairs: list[tuple[list[int], list[int]]], pad_token_id: int, *, batch_size: int,
                  device) -> np.ndarray:
    """Raw scores (N,) of already encoded (prompt ids, response ids) pairs, right-padded in batches
    of ``batch_size``: the one way a reward model is run over texts (scorer, RM normalisation)."""
    out = np.zeros(len(pairs))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = response_batch([p for p, _ in chunk], [r for _, r in chunk], pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        out[start:start + len(chunk)] = raw_rewards(model, batch).cpu().numpy()
    return out


class RewardScorer:
    """Batched scoring of (prompt, response) texts with a (possibly ensembled) reward model."""

    def __init__(self, model_dir: str | Path, *, max_length: int = 512, device: str | torch.device = "cpu",
                 dtype: str = "float32"):
        self.members = ensemble_members(model_dir)
        self.tokenizer = load_tokenizer(str(self.members[0]))
        self.models = [load_reward_model(str(m), self.tokenizer, dtype=dtype).to(device).eval()
                       for m in self.members]
        self.max_length = max_length
        self.device = device

    def score_members(self, prompts: list[str], responses: list[str], *, batch_size: int = 32,
                      normalized: bool = True) -> np.ndarray:
        """Every member's reward, shape (M members, N rows); one row (1, N) for a single model.
        Active selection needs the members apart: their disagreement is the uncertainty."""
        pairs = encode_prompt_response(self.tokenizer, prompts, responses, max_length=self.max_length)
        per_model = np.zeros((len(self.models), len(pairs)))
        for k, model in enumerate(self.models):
            r = score_encoded(model, pairs, self.tokenizer.pad_token_id, batch_size=batch_size,
                              device=self.device)
            if normalized:
                r = (r - getattr(model.config, REWARD_OFFSET, 0.0)) / getattr(model.config, REWARD_SCALE, 1.0)
            per_model[k] = r
        return per_model

    def score(self, prompts: list[str], responses: list[str], *, batch_size: int = 32,
              normalized: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Returns (mean reward (N,), std across ensemble members (N,); zeros for one model)."""
        per_model = self.score_members(prompts, responses, batch_size=batch_size, normalized=normalized)
        return per_model.mean(0), per_model.std(0)


def score_file(cfg) -> Path:
    """`rlhf score`: add the reward (and, for ensembles, its std) to every row of a file."""
    from rlhfkit.data.loading import read_records, write_jsonl
    from rlhfkit.errors import DataError

    rows = read_records(cfg.input)
    for i, r in enumerate(rows, start=1):
        for field in ("prompt", cfg.response_field):
            if not isinstance(r.get(field), str):
                got = r.get(field)
                raise DataError("missing" if got is None else f"expected a string, got {type(got).__name__}",
                                source=cfg.input, row=i, field=field)
    scorer = RewardScorer(cfg.model, max_length=cfg.max_length)
    mean, std = scorer.score([r["prompt"] for r in rows], [r[cfg.response_field] for r in rows],
                             batch_size=cfg.batch_size)
    out_rows = []
    for r, m, s in zip(rows, mean.tolist(), std.tolist()):
        extra = {cfg.score_field: m}
        if len(scorer.models) > 1:
            extra[f"{cfg.score_field}_std"] = s
        out_rows.append({**r, **extra})
    out = write_jsonl(cfg.output, out_rows)
    log.info("scored %d rows with %d model(s): mean %.4f -> %s", len(rows), len(scorer.models),
             float(mean.mean()), out)
    return out
