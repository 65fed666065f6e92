"""Model I/O rules: a distinct pad token, chat templates, tokenisation of every SFT format."""

from __future__ import annotations

import json

import torch

from rlhfkit.data.collate import tokenize_sft
from rlhfkit.modeling import PAD_TOKEN, chat_renderer, load_causal_lm, load_tokenizer


def test_missing_pad_token_gets_a_dedicated_one(world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world / "base")
    tok.pad_token = tok.eos_token  # the classic mistake: pad == eos
    d = tmp_path / "padless"
    tok.save_pretrained(d)
    AutoModelForCausalLM.from_pretrained(world / "base").save_pretrained(d)
    tok2 = load_tokenizer(str(d))
    assert tok2.pad_token == PAD_TOKEN and tok2.pad_token_id != tok2.eos_token_id
    model = load_causal_lm(str(d), tok2)
    assert model.get_input_embeddings().weight.shape[0] >= len(tok2)
    assert model.config.pad_token_id == tok2.pad_token_id


def test_sft_tokenisation_boundaries_and_truncation(world):
    tok = load_tokenizer(str(world / "base"))
    rows = [{"prompt": "review of the film x :", "completion": " the film was good ."}]
    ds, dropped = tokenize_sft(rows, tok, max_length=64)
    ids, mask = ds[0]["input_ids"], ds[0]["completion_mask"]
    p = tok(rows[0]["prompt"])["input_ids"]
    c = tok(rows[0]["completion"], add_special_tokens=False)["input_ids"]
    assert ids == p + c + [tok.eos_token_id] and mask == [0] * len(p) + [1] * (len(c) + 1)
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids[:-1]
    right, _ = tokenize_sft(rows, tok, max_length=len(p) + 2, truncation_side="right")
    assert right[0]["input_ids"] == (p + c)[: len(p) + 2]
    left, _ = tokenize_sft(rows, tok, max_length=len(c) + 1, truncation_side="left")
    assert left[0]["input_ids"] == c + [tok.eos_token_id] and all(left[0]["completion_mask"])
    none, n_dropped = tokenize_sft(rows, tok, max_length=len(p), truncation_side="right")
    assert len(none) == 0 and n_dropped == 1  # nothing left to learn from: dropped and counted


def test_chat_template_rows_tokenise(world):
    from rlhfkit.data.formats import normalize

    tok = load_tokenizer(str(world / "base"))
    render = chat_renderer(tok)
    rows = [{"messages": [{"role": "user", "content": "review the film x"},
                          {"role": "assistant", "content": "the film was good ."}]}]
    norm, _ = normalize(rows, "sft", source="chat.jsonl", render_chat=render)
    assert norm[0]["prompt"] == "<|user|> review the film x\n<|assistant|>"
    assert norm[0]["completion"].strip() == "the film was good ."
    ds, _ = tokenize_sft(norm, tok, max_length=64)
    assert (sum(ds[0]["completion_mask"])
            == len(tok(norm[0]["completion"], add_special_tokens=False)["input_ids"]) + 1)


def test_padding_side_does_not_change_logprobs(world):
    from rlhfkit.data.collate import SFTCollator
    from rlhfkit.losses import token_nll

    tok = load_tokenizer(str(world / "base"))
    model = load_causal_lm(str(world / "base"), tok)
    rows = [{"prompt": "review of the film x :", "completion": " the film was good ."},
            {"prompt": "the blender", "completion": " it broke after a week , sadly it was bad ."}]
    ds, _ = tokenize_sft(rows, tok, max_length=64)
    out = {}
    for side in ("left", "right"):
        b = SFTCollator(tok.pad_token_id, side)(ds.to_list())
        labels = b.pop("labels")
        with torch.no_grad():
            out[side] = token_nll(model(**b).logits, labels)[0].item()
    assert abs(out["left"] - out["right"]) < 1e-4


def test_large_jsonl_loads_and_tokenises(world, tmp_path):
    from rlhfkit.train.data import load_rows

    src = [json.loads(ln) for ln in (world / "sft.jsonl").read_text().splitlines()]
    big = tmp_path / "big.jsonl"
    with big.open("w") as f:
        while big.stat().st_size < 5_000_000:
            for r in src:
                f.write(json.dumps(r) + "\n")
            f.flush()
    rows, report = load_rows(str(big), "sft")
    tok = load_tokenizer(str(world / "base"))
    ds, _ = tokenize_sft(rows, tok, max_length=64)
    assert len(ds) == len(rows) == report["kept"] > 40_000


def test_pair_tokenisation_shares_the_prompt_cut(world):
    from rlhfkit.data.collate import tokenize_pairs

    tok = load_tokenizer(str(world / "base"))
    rows = [{"prompt": "review of the film x :", "chosen": " the film was good .",
             "rejected": " it was bad .", "margin": 2.0}]
    ds, dropped = tokenize_pairs(rows, tok, max_length=64)
    e = ds[0]
    assert e["prompt_ids"] == tok(rows[0]["prompt"])["input_ids"] and dropped == 0
    assert (e["chosen_ids"]
            == tok(rows[0]["chosen"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    assert e["margin"] == 2.0 and e["tie"] is False
    short, _ = tokenize_pairs(rows, tok, max_length=8, max_prompt_length=4)
    s = short[0]
    assert s["prompt_ids"] == e["prompt_ids"][-4:]  # the prompt keeps its end
    assert (len(s["prompt_ids"]) + len(s["chosen_ids"]) <= 8
            and len(s["prompt_ids"]) + len(s["rejected_ids"]) <= 8)
