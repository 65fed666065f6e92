"""Checks that need no stage config (detail 2 of :mod:`rlhfkit.pipeline`): the input paths a user
gives exist, and the policy's tokenizer fits its embedding. No weights are loaded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlhfkit.config import PipelineConfig
from rlhfkit.errors import ConfigError

WORLD = "${world}"
# Keys whose values are input paths the user gives (checked before anything runs).
PATH_KEYS = ("model", "tokenizer", "data", "eval_data", "prompts", "responses", "reward_model", "value_model",
             "ref_model", "guidelines")


def substitute(value: Any, world: str | None) -> Any:
    """``${world}`` in any string of ``value`` -> the synthetic world's directory."""
    if isinstance(value, str) and WORLD in value:
        if world is None:
            raise ConfigError(f"'{value}' refers to ${{world}} but the pipeline has no `world` section")
        return value.replace(WORLD, world)
    if isinstance(value, dict):
        return {k: substitute(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, world) for v in value]
    return value


def user_paths(cfg: PipelineConfig, world: str | None) -> list[tuple[str, str]]:
    """(where, path) of every input path the file gives, `${world}` resolved."""
    found = []
    sections = [(name, getattr(cfg, name)) for name in ("sft", "collect", "reward", "evaluate", "label")]
    for group in ("rl", "dpo"):
        sections += [(f"{group}.{run}", sec) for run, sec in getattr(cfg, group).items()]
    for where, sec in sections:
        values = substitute(sec.overrides(), world) if sec is not None else {}
        found += [(f"{where}.{k}", v) for k, v in values.items() if k in PATH_KEYS and isinstance(v, str)]
    if cfg.policy:
        found.append(("policy", cfg.policy))
    return found


def check_paths(cfg: PipelineConfig, world: str | None) -> None:
    for where, value in user_paths(cfg, world):
        if world and value.startswith(world):
            continue  # made by the pipeline's own world stage
        looks_local = value.startswith(("/", ".", "~")) or value.count("/") > 1 or os.sep in value \
            or value.endswith((".jsonl", ".json", ".csv", ".parquet", ".md", ".yaml"))
        if looks_local and not Path(os.path.expanduser(value)).exists():
            raise ConfigError(f"pipeline: {where} = '{value}' does not exist")


def check_tokenizer(cfg: PipelineConfig, world: str | None) -> None:
    """The policy's tokenizer must fit its embedding (a common mistake: a tokenizer from another
    model family). Read from the configs only."""
    sft = substitute(cfg.sft.overrides(), world) if cfg.sft is not None else {}
    model = sft.get("model") or cfg.policy
    if not model or (world and model.startswith(world)) or not Path(model).exists():
        return
    tokenizer = sft.get("tokenizer") or model
    from transformers import AutoConfig, AutoTokenizer

    try:
        mcfg = AutoConfig.from_pretrained(model)
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except (OSError, ValueError) as e:
        raise ConfigError(f"pipeline: cannot read model/tokenizer '{model}' / '{tokenizer}': {e}") from None
    vocab = getattr(mcfg, "vocab_size", None) or getattr(mcfg.get_text_config(), "vocab_size", None)
    if vocab is not None and len(tok) > vocab + 1:  # +1: rlhfkit adds a pad token when there is none
        raise ConfigError(f"pipeline: tokenizer '{tokenizer}' has {len(tok)} tokens but model '{model}' has "
                          f"an embedding of {vocab}: they do not belong together (sft.tokenizer / sft.model)")
