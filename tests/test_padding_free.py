"""Padding-free micro-batches (rlhfkit/data/padding_free.py): the bin-packing itself, and for SFT,
reward and DPO that the padding-free loss and gradients equal the padded ones on mixed-length
batches, on tiny models of several conformance-matrix architectures (OPT never derives a mask
from positions; GPT-2 has learned absolute positions; Llama and Qwen2 use rotary ones)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from rlhfkit.data.padding_free import first_fit_decreasing, pack_sequences
from rlhfkit.testing.conformance import CONTEXT, build_model, build_tokenizer

pytestmark = [pytest.mark.usefixtures("one_thread")]
ARCHS = ("llama", "gpt2", "opt", "qwen2")
TOL = {"rtol": 1e-5, "atol": 1e-5}

# Prompt/response texts of very different lengths (a few to ~30 tokens), so a micro-batch has
# real padding to remove and several sequences share a packed row.
PROMPTS = ["hi", "what is the capital of france? tell me in one short sentence please.",
           "list three colours:", "explain recursion in one sentence, with an example about the sea", "1 2 3"]
GOOD = ["paris.", "red, green, blue and a few more colours of the sea: it is wide and blue and deep.",
        "a function that calls itself.", "ok", "4 5 6 7 8 9 10"]
BAD = ["the capital of france is a city somewhere in europe, i think, or maybe not.", "no", "blue",
       "a function that calls itself on a smaller problem until it stops.", "?"]


def test_first_fit_decreasing_by_hand():
    # Longest first: 5 opens bin 0, 4 opens bin 1, 3 opens bin 2, 2 joins 3, 1 joins 4.
    assert first_fit_decreasing([3, 5, 2, 4, 1], 5) == [[1], [3, 4], [0, 2]]
    assert first_fit_decreasing([2, 2, 2], 6) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([7], 6)


def test_pack_sequences_places_every_example_once_and_gathers_it_back():
    rng = random.Random(0)
    seqs = [[rng.randrange(1, 100) for _ in range(rng.randrange(1, 20))] for _ in range(30)]
    masks = [[rng.randrange(2) for _ in s] for s in seqs]
    b = pack_sequences(seqs, pad_token_id=0, masks={"m": masks})
    width = max(map(len, seqs))
    rows = b["input_ids"].shape[0]
    assert b["input_ids"].shape == (rows, width) and rows < len(seqs)
    assert rows >= -(-sum(map(len, seqs)) // width)  # no fewer rows than the tokens need
    flat_ids, flat_seg = b["input_ids"].reshape(-1), b["segment_ids"].reshape(-1)
    assert int((flat_seg >= 0).sum()) == sum(map(len, seqs))  # nothing lost, nothing duplicated
    for i, s in enumerate(seqs):
        where = flat_seg == i
        assert flat_ids[where].tolist() == s  # one contiguous run per example, in order
        assert b["m"].reshape(-1)[where].tolist() == masks[i]
        assert b["position_ids"].reshape(-1)[where].tolist() == list(range(len(s)))
        assert int(b["last_index"][i]) == int(where.nonzero().max())
    pad = b["segment_ids"] < 0
    assert (b["input_ids"][pad] == 0).all() and (b["m"][pad] == 0).all()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pf-zoo")
    build_tokenizer("chatml", root / "tok")
    for a in ARCHS:
        build_model(a, root / f"model-{a}")
    return root


def _tok(zoo: Path):
    from rlhfkit.modeling import load_tokenizer

    return load_tokenizer(str(zoo / "tok"))


def _pairs(tok):
    from rlhfkit.data.collate import take, tokenize_pairs

    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(PROMPTS, GOOD, BAD)]
    ds, _ = tokenize_pairs(rows, tok, max_length=CONTEXT)
    return take(ds, list(range(len(ds))))


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out


def _assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("arch", ARCHS)
def test_sft_padding_free_loss_and_grads_equal_padded(zoo, arch):
    from rlhfkit.data.collate import SFTCollator, take, tokenize_sft
    from rlhfkit.modeling import load_causal_lm
    from rlhfkit.train.sft import batch_nll

    tok = _tok(zoo)
    model = load_causal_lm(str(zoo / f"model-{arch}"), tok)
    rows = [{"prompt": p, "completion": c} for p, c in zip(PROMPTS + BAD, GOOD + GOOD)]
    ds, _ = tokenize_sft(rows, tok, max_length=CONTEXT)
    examples = take(ds, list(range(len(ds))))
    for completion_only in (True, False):
        padded = SFTCollator(tok.pad_token_id, "right", completion_only=completion_only)(examples)
        free = SFTCollator(tok.pad_token_id, completion_only=completion_only, padding_free=True)(examples)
        assert free["input_ids"].numel() < padded["input_ids"].numel()  # padding really went away
        results = []
        for b in (padded, free):
            nll, n = batch_nll(model, b)
            (nll / n).backward()
            results.append((nll.detach(), int(n), _grads(model)))
        (nll_p, n_p, g_p), (nll_f, n_f, g_f) = results
        assert n_f == n_p
        torch.testing.assert_close(nll_f, nll_p, **TOL)
        _assert_same_grads(g_p, g_f)


@pytest.mark.parametrize("arch", ARCHS)
def test_reward_padding_free_scores_loss_and_grads_equal_padded(zoo, arch):
    from rlhfkit.data.collate import PairCollator
    from rlhfkit.losses import bradley_terry_loss
    from rlhfkit.modeling import load_reward_model
    from rlhfkit.scoring import batch_rewards

    tok = _tok(zoo)
    torch.manual_seed(0)
    rm = load_reward_model(str(zoo / f"model-{arch}"), tok)
    ex = _pairs(tok)
    n = len(ex)
    free = PairCollator(tok.pad_token_id, padding_free=True)(ex)
    r_free = batch_rewards(rm, free)
    bradley_terry_loss(r_free[:n], r_free[n:])[0].backward()
    g_free = _grads(rm)
    for side in ("right", "left"):
        padded = PairCollator(tok.pad_token_id, side)(ex)
        r_pad = batch_rewards(rm, padded)  # the model's own pooling at the last non-pad token
        torch.testing.assert_close(r_free.detach(), r_pad.detach(), **TOL)
        bradley_terry_loss(r_pad[:n], r_pad[n:])[0].backward()
        _assert_same_grads(_grads(rm), g_free)
    assert free["response_len"].tolist() == padded["response_mask"].sum(-1).tolist()


def test_reward_ranking_padding_free_equals_padded(zoo):
    from rlhfkit.data.collate import RankingCollator, take, tokenize_rankings
    from rlhfkit.losses import ranking_loss
    from rlhfkit.modeling import load_reward_model
    from rlhfkit.scoring import batch_rewards

    tok = _tok(zoo)
    torch.manual_seed(0)
    rm = load_reward_model(str(zoo / "model-llama"), tok)
    rows = [{"prompt": p, "responses": [g, b, "ok."], "ranks": [1, 3, 2]}
            for p, g, b in zip(PROMPTS, GOOD, BAD)]
    ds = tokenize_rankings(rows, tok, max_length=CONTEXT)
    ex = take(ds, list(range(len(ds))))
    out = []
    for padding_free in (False, True):
        b = RankingCollator(tok.pad_token_id, padding_free=padding_free)(ex)
        r = batch_rewards(rm, b)
        loss, _ = ranking_loss(r, b["better"], b["worse"], b["pair_weight"], b["num_prompts"])
        loss.backward()
        out.append((r.detach(), loss.detach(), _grads(rm)))
    torch.testing.assert_close(out[1][0], out[0][0], **TOL)
    torch.testing.assert_close(out[1][1], out[0][1], **TOL)
    _assert_same_grads(out[0][2], out[1][2])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_padding_free_logps_loss_and_grads_equal_padded(zoo, arch, loss_type):
    """Summed log-probs and token counts per sequence (IPO divides by the counts) equal the
    left- and right-padded batch's; so do the loss and its gradients."""
    from rlhfkit.data.collate import PairCollator
    from rlhfkit.logprobs import sequence_logprobs
    from rlhfkit.losses import dpo_loss
    from rlhfkit.modeling import load_causal_lm

    tok = _tok(zoo)
    policy = load_causal_lm(str(zoo / f"model-{arch}"), tok)
    ex = _pairs(tok)
    n = len(ex)
    ref = -torch.arange(2 * n, dtype=torch.float32)  # any fixed reference log-probs

    def loss_and_grads(batch):
        lp, n_tok = sequence_logprobs(policy, batch)  # (2B,)
        loss, _ = dpo_loss(lp[:n], lp[n:], ref[:n], ref[n:], loss_type=loss_type, beta=0.1,
                           chosen_tokens=n_tok[:n], rejected_tokens=n_tok[n:], num_pairs=n)
        loss.backward()
        return lp.detach(), n_tok, loss.detach(), _grads(policy)

    free = loss_and_grads(PairCollator(tok.pad_token_id, padding_free=True)(ex))
    for side in ("right", "left"):
        padded = loss_and_grads(PairCollator(tok.pad_token_id, side)(ex))
        torch.testing.assert_close(free[0], padded[0], **TOL)
        assert free[1].tolist() == padded[1].tolist()
        torch.testing.assert_close(free[2], padded[2], **TOL)
        _assert_same_grads(padded[3], free[3])


# ----------------------------------------------------------------------------- whole stages


@pytest.fixture(scope="module")
def prefs(world, sft_model, tmp_path_factory) -> dict[str, Path]:
    from rlhfkit.synthetic.preferences import preference_splits

    return preference_splits(sft_model, world, tmp_path_factory.mktemp("pf-prefs"), seed=1)


def _curves(run_dir: Path) -> dict[str, list[float]]:
    """Every logged loss / accuracy / eval value of a run, by key, in step order."""
    from rlhfkit.train.common import read_metrics

    out: dict[str, list[float]] = {}
    for row in read_metrics(run_dir):
        for k, v in row.items():
            if isinstance(v, float) and (k in ("loss", "accuracy") or k.startswith("eval_")):
                out.setdefault(k, []).append(v)
    return out


def _same_run(padded: Path, free: Path, skip: tuple[str, ...] = ()) -> None:
    a, b = _curves(padded), _curves(free)
    assert a.keys() == b.keys() and "loss" in a
    for k in a.keys() - set(skip):
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), k


def test_sft_stage_padding_free_equals_padded(world, tmp_path):
    from rlhfkit.config import SFTConfig
    from rlhfkit.train.sft import train

    def run(name: str, padding_free: bool) -> Path:
        train(SFTConfig(model=str(world / "base"), data=str(world / "sft.jsonl"),
                        eval_data=str(world / "sft_eval.jsonl"), output_dir=str(tmp_path / name),
                        learning_rate=1e-3, per_device_batch_size=4, gradient_accumulation_steps=2,
                        max_steps=4, max_length=64, log_every=1, warmup_ratio=0.0, seed=3,
                        padding_free=padding_free))
        return tmp_path / name

    _same_run(run("padded", False), run("free", True))


def test_reward_stage_padding_free_equals_padded(sft_model, prefs, tmp_path):
    from rlhfkit.config import RewardConfig
    from rlhfkit.train.reward import train

    def run(name: str, padding_free: bool) -> Path:
        train(RewardConfig(model=str(sft_model), data=str(prefs["train"]), eval_data=str(prefs["eval"]),
                           output_dir=str(tmp_path / name), learning_rate=1e-3, per_device_batch_size=4,
                           gradient_accumulation_steps=2, max_steps=4, max_length=96, log_every=1,
                           warmup_ratio=0.0, normalize="none", seed=0, padding_free=padding_free))
        return tmp_path / name

    _same_run(run("padded", False), run("free", True))


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_stage_padding_free_equals_padded(sft_model, prefs, tmp_path, loss_type):
    """Also the precomputed reference pass, which packs the same way. Accuracy (margin > 0) is
    not compared: at step 0-1 the policy is the reference, every margin is 0 up to rounding, and
    the precomputed pass packs batches of another size than training, so its sign is noise."""
    from rlhfkit.config import DPOConfig
    from rlhfkit.train.dpo import train

    def run(name: str, padding_free: bool) -> Path:
        train(DPOConfig(model=str(sft_model), data=str(prefs["train"]), eval_data=str(prefs["eval"]),
                        output_dir=str(tmp_path / name), learning_rate=5e-4, per_device_batch_size=4,
                        gradient_accumulation_steps=2, max_steps=4, max_length=96, log_every=1,
                        warmup_ratio=0.0, seed=3, eval_sample_prompts=0, loss_type=loss_type,
                        precompute_ref_logprobs=loss_type == "ipo", padding_free=padding_free))
        return tmp_path / name

    _same_run(run("padded", False), run("free", True), skip=("accuracy", "eval_accuracy"))
