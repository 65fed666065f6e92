"""The synthetic world is a deterministic function of its config, and its base model is usable."""

from __future__ import annotations

import hashlib
import json

from rlhfkit.config import SynthConfig
from rlhfkit.synthetic.world import build


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny(out) -> SynthConfig:
    return SynthConfig(output_dir=str(out), n_docs=200, vocab_size=400, hidden_size=32, num_layers=1,
                       num_heads=2, pretrain_steps=4, pretrain_batch_size=4, pretrain_seq_len=32, n_sft=50,
                       n_prompts=20)


def test_world_is_deterministic_and_reused(tmp_path):
    a, b = build(tiny(tmp_path / "a")), build(tiny(tmp_path / "b"))
    for rel in ("tokenizer/tokenizer.json", "base/model.safetensors", "sft.jsonl", "prompts_eval.jsonl",
                "corpus.jsonl"):
        assert digest(a / rel) == digest(b / rel), rel
    stamp = (a / "base" / "model.safetensors").stat().st_mtime_ns
    build(tiny(tmp_path / "a"))  # same config: reused, not rebuilt
    assert (a / "base" / "model.safetensors").stat().st_mtime_ns == stamp
    other = tiny(tmp_path / "a")
    other.seed = 1
    build(other)  # a different config is rebuilt in place
    assert digest(a / "sft.jsonl") != digest(b / "sft.jsonl")


def test_world_tokenizer_has_distinct_special_tokens(world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world / "tokenizer")
    ids = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}
    assert len(ids) == 3 and None not in ids
    text = "review of the film midnight river : the film was very good ."
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    manifest = json.loads((world / "world.json").read_text())
    assert set(manifest["files"]) >= {"base_model", "sft", "prompts", "prompts_eval", "tokenizer"}
