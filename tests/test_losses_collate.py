"""Masked SFT loss by hand, and collators against expected tensors."""

import math

import torch

from rlhfkit.data.collate import SFTCollator, left_pad_prompts, pack, position_ids_from_mask, take
from rlhfkit.losses import IGNORE_INDEX, sft_loss, token_nll


def test_masked_sft_loss_by_hand():
    # Vocabulary of 3; logits chosen so the softmax is easy to write down.
    logits = torch.tensor([[[0.0, 0.0, 0.0],              # t=0 predicts label[1]
                            [math.log(3.0), 0.0, 0.0],   # t=1 predicts label[2]
                            [0.0, 0.0, 0.0]]])           # t=2: nothing to predict
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    # p(1 | t=0) = 1/3; p(0 | t=1) = 3/(3+1+1) = 3/5
    expected = (-math.log(1 / 3) - math.log(3 / 5)) / 2
    loss, m = sft_loss(logits, labels)
    assert loss.item() == pytest_approx(expected)
    assert m["tokens"] == 2
    # prompt (ignored) labels do not count
    labels2 = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0]])
    assert sft_loss(logits, labels2)[0].item() == pytest_approx(-math.log(3 / 5))
    # a caller-provided denominator (token count of the whole step) is used as is
    nll, n = token_nll(logits, labels)
    assert sft_loss(logits, labels, num_tokens=4)[0].item() == pytest_approx(nll.item() / 4)


def pytest_approx(x):
    import pytest
    return pytest.approx(x, rel=1e-6, abs=1e-6)


def test_collator_right_padding_and_completion_mask():
    ex = [{"input_ids": [5, 6, 7, 8], "completion_mask": [0, 0, 1, 1]},
          {"input_ids": [5, 9], "completion_mask": [0, 1]}]
    b = SFTCollator(pad_token_id=0, padding_side="right")(ex)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8], [5, 9, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert b["labels"].tolist() == [[-100, -100, 7, 8], [-100, 9, -100, -100]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 0]]
    whole = SFTCollator(pad_token_id=0, completion_only=False)(ex)
    assert whole["labels"].tolist() == [[5, 6, 7, 8], [5, 9, -100, -100]]


def test_collator_left_padding_positions():
    ex = [{"input_ids": [5, 6, 7], "completion_mask": [0, 1, 1]},
          {"input_ids": [5, 9], "completion_mask": [0, 1]}]
    b = SFTCollator(pad_token_id=0, padding_side="left")(ex)
    assert b["input_ids"].tolist() == [[5, 6, 7], [0, 5, 9]]
    assert b["labels"].tolist() == [[-100, 6, 7], [-100, -100, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
    p = left_pad_prompts([[1, 2, 3], [4]], pad_token_id=0)
    assert p["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4]]
    assert p["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids_from_mask(p["attention_mask"]).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_packing_blocks_and_positions():
    import datasets
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8]],
                                     "completion_mask": [[0, 1, 1], [1, 1], [0, 0, 1]]})
    packed = pack(ds, 4)
    assert packed["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert packed["position_ids"] == [[0, 1, 2, 0], [0, 0, 1, 2]]
    assert packed["completion_mask"] == [[0, 1, 1, 1], [1, 0, 0, 1]]
    b = SFTCollator(pad_token_id=0)(packed.to_list())
    assert "attention_mask" not in b  # block-diagonal mask comes from the position ids
    # An example's first token is "predicted" by the previous example's last token, which it
    # cannot attend to: that boundary-crossing label carries no loss (token 4, and 5 at a block start).
    assert b["labels"].tolist() == [[-100, 2, 3, -100], [-100, -100, -100, 8]]


def test_pair_collator_stacks_chosen_then_rejected():
    from rlhfkit.data.collate import PairCollator

    ex = [{"prompt_ids": [1, 2], "chosen_ids": [3, 9], "rejected_ids": [4, 5, 9], "margin": 1.5,
           "tie": False},
          {"prompt_ids": [1], "chosen_ids": [6, 9], "rejected_ids": [7, 9], "margin": 0.0, "tie": True}]
    b = PairCollator(pad_token_id=0)(ex)
    assert b["input_ids"].tolist() == [[1, 2, 3, 9, 0], [1, 6, 9, 0, 0], [1, 2, 4, 5, 9], [1, 7, 9, 0, 0]]
    assert b["response_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert b["margin"].tolist() == [1.5, 0.0] and b["tie"].tolist() == [False, True]
    left = PairCollator(pad_token_id=0, padding_side="left")(ex)
    assert left["input_ids"][1].tolist() == [0, 0, 1, 6, 9]
    assert left["position_ids"][1].tolist() == [0, 0, 0, 1, 2]


def test_token_logprobs_by_hand():
    from rlhfkit.logprobs import token_logprobs

    logits = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0], [0.0, 0.0]]])  # (1, 3, 2)
    ids = torch.tensor([[1, 0, 1]])
    lp = token_logprobs(logits, ids)  # predicts ids[1]=0 from t=0, ids[2]=1 from t=1
    assert lp.tolist()[0] == pytest_approx([math.log(3 / 4), math.log(1 / 2)])
    hot = token_logprobs(logits, ids, temperature=2.0)  # logits halved before the softmax
    assert hot[0, 0].item() == pytest_approx(math.log(math.sqrt(3) / (math.sqrt(3) + 1)))


def test_take_matches_select_in_order_with_repeats():
    """``take`` (one columnar read) returns what ``select(...).to_list()`` did, in index order,
    repeated indices included (a sampler may wrap around)."""
    from datasets import Dataset

    ds = Dataset.from_dict({"input_ids": [[1], [2, 3], [4, 5, 6], [7]], "n": [0, 1, 2, 3]})
    idx = [2, 0, 2, 3]
    assert take(ds, idx) == ds.select(idx).to_list()
    assert [r["n"] for r in take(ds, idx)] == idx
    assert take(ds, []) == []
