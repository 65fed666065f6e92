"""The stages themselves on the conformance zoo: for each of the eight architectures (with a chat
template of its family, dropout on and a hostile generation_config.json), conversational data runs
through `rlhf sft` (packed), `rlhf reward` (LoRA), `rlhf ppo` (critic from that reward model, a
prompt longer than the context) and `rlhf dpo`, and each stage's own logs show the invariants:
packed SFT step loss == unpacked, reward LoRA trains and saves a plain directory, first PPO ratio
1 with the long prompt cut, DPO step-0 loss ln 2. The per-cell mechanics are in test_conformance.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlhfkit.testing.conformance import ARCHITECTURES, CONTEXT, CONVERSATIONS, build_model, build_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

FAMILY_TEMPLATE = {"llama": "llama3", "qwen2": "chatml", "mistral": "mistral", "gemma": "gemma",
                   "gpt2": "chatml", "opt": "mistral", "phi3": "phi3", "gpt_neox": "chatml"}


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _metrics(run_dir: Path) -> list[dict]:
    from rlhfkit.train.common import read_metrics

    return read_metrics(run_dir)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("conv-data")
    long_user = [{"role": "user", "content": "tell me about the sea " * 20}]  # > the 64-token context
    prompts = [{"prompt": c[:-1]} for c in CONVERSATIONS] + [{"prompt": long_user}]
    prefs = [{"prompt": c[:-1], "chosen": c[-1:], "rejected": [{"role": "assistant", "content": "no idea."}]}
             for c in CONVERSATIONS]
    return {"sft": _jsonl(d / "sft.jsonl", [{"messages": c} for c in CONVERSATIONS] * 2),
            "prompts": _jsonl(d / "prompts.jsonl", prompts * 2),
            "prefs": _jsonl(d / "prefs.jsonl", prefs * 2)}


def _model(tmp: Path, arch: str) -> tuple[str, str]:
    tok = build_tokenizer(FAMILY_TEMPLATE[arch], tmp / "tok")
    return str(build_model(arch, tmp / "model")), str(tok)


COMMON = {"log_every": 1, "save_every": 0, "eval_fraction": 0.0, "seed": 0}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sft_packed_step_loss_equals_unpacked(arch, data, tmp_path):
    from rlhfkit.config import SFTConfig
    from rlhfkit.train.sft import train

    model, tok = _model(tmp_path, arch)
    losses = {}
    for packing in (False, True):
        out = tmp_path / f"sft-{packing}"
        # One step over every example (6 rows, or 1 packed block of them): the logged loss is the
        # token-mean NLL of the untrained model over the same tokens either way.
        block = 6 * CONTEXT if packing else CONTEXT
        train(SFTConfig(model=model, tokenizer=tok, data=data["sft"], output_dir=str(out), packing=packing,
                        max_length=block, per_device_batch_size=1 if packing else 6, max_steps=1,
                        completion_only_loss=False, learning_rate=1e-4, **COMMON))
        losses[packing] = _metrics(out)[0]["loss"]
        assert (out / "final" / "model.safetensors").is_file()
    assert losses[True] == pytest.approx(losses[False], rel=1e-4), losses


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reward_lora_then_ppo_then_dpo(arch, data, tmp_path, caplog):
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.config import DPOConfig, PPOConfig, RewardConfig
    from rlhfkit.train.dpo import train as dpo_train
    from rlhfkit.train.ppo import train as ppo_train
    from rlhfkit.train.reward import train as reward_train

    model, tok = _model(tmp_path, arch)
    # Reward model with LoRA (crashed before: CAUSAL_LM task type on a sequence classifier).
    rm_dir = reward_train(RewardConfig(model=model, tokenizer=tok, data=data["prefs"],
                                       output_dir=str(tmp_path / "rm"), lora_r=8, learning_rate=1e-3,
                                       per_device_batch_size=3, max_steps=4, max_length=CONTEXT,
                                       normalize="none", **COMMON))
    plain = AutoModelForSequenceClassification.from_pretrained(rm_dir)  # transformers alone
    assert plain.config.num_labels == 1
    rm_losses = [r["loss"] for r in _metrics(tmp_path / "rm") if "loss" in r]
    assert rm_losses[-1] < rm_losses[0], rm_losses  # the LoRA reward model learned

    # PPO with the critic initialised from that reward model; the long prompt is cut, with a warning.
    with caplog.at_level("WARNING"):
        ppo_train(PPOConfig(model=model, tokenizer=tok, data=data["prompts"],
                            output_dir=str(tmp_path / "ppo"), reward_model=str(rm_dir), prompts_per_device=4,
                            mini_batch_size=4, ppo_epochs=1, max_new_tokens=8, max_length=CONTEXT,
                            max_steps=2, eval_prompts=0, learning_rate=1e-4, **COMMON))
    assert "training prompts were longer than 56 tokens and were cut from the left" in caplog.text
    first = [r for r in _metrics(tmp_path / "ppo") if "first_ratio" in r]
    assert first and all(abs(r["first_ratio"] - 1.0) < 1e-5 and r["first_approx_kl"] < 1e-9 for r in first)
    assert first[0]["seq_kl"] == pytest.approx(0.0, abs=1e-5)

    # DPO: the untrained policy against its reference, in train mode, starts at ln 2.
    dpo_train(DPOConfig(model=model, tokenizer=tok, data=data["prefs"], output_dir=str(tmp_path / "dpo"),
                        per_device_batch_size=6, max_steps=1, max_length=CONTEXT, learning_rate=1e-4,
                        **COMMON))
    assert _metrics(tmp_path / "dpo")[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
