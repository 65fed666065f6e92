"""The conformance matrix: every check that touches tokenisation, generation, log-probs, dropout,
padding, packing or saving, on tiny stand-ins for the models users bring (eight architectures x
five chat-template conventions, with dropout on and a hostile generation_config.json; see
rlhfkit/testing/conformance.py). Every architecture pairs with every template (one shared
vocabulary), so each test below runs once per (architecture, template) cell."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from rlhfkit.testing.conformance import ARCHITECTURES, CONTEXT, CONVERSATIONS, TEMPLATES, template_ids

pytestmark = [pytest.mark.usefixtures("one_thread")]
CELLS = [(a, t) for a in ARCHITECTURES for t in TEMPLATES]


def _load(zoo: Path, arch: str, template: str, *, reward: bool = False):
    from rlhfkit.modeling import load_causal_lm, load_reward_model, load_tokenizer

    tok = load_tokenizer(str(zoo / f"tok-{template}"))
    loader = load_reward_model if reward else load_causal_lm
    torch.manual_seed(0)  # a reward model's fresh head
    return tok, loader(str(zoo / f"model-{arch}"), tok)


def _rows(tok, kind: str):
    """The conversations as the data layer normalises them for a stage of ``kind``."""
    from rlhfkit.data.formats import normalize
    from rlhfkit.modeling import chat_renderer

    rows = [{"messages": c} for c in CONVERSATIONS]
    return normalize(rows, kind, source="conversations", render_chat=chat_renderer(tok))[0]


def _conversations(tok) -> list[list[dict]]:
    # Mistral's template (like Mistral's own) has no system turn: compare with what it renders.
    return CONVERSATIONS


@pytest.mark.parametrize("arch,template", CELLS)
def test_token_ids_equal_the_models_own_template(zoo, arch, template):
    """One BOS, one end-of-turn: SFT examples, RL / evaluation prompts and preference pairs are
    tokenised to exactly ``apply_chat_template(..., tokenize=True)`` (bug 4)."""
    from rlhfkit.data.collate import tokenize_pairs, tokenize_sft
    from rlhfkit.rl.rollout import generate_rollout

    tok, model = _load(zoo, arch, template)
    sft_rows = _rows(tok, "sft")
    ds, dropped = tokenize_sft(sft_rows, tok, max_length=512)
    assert dropped == 0
    for conv, ids in zip(CONVERSATIONS, ds["input_ids"]):
        assert ids == template_ids(tok, conv), (tok.decode(ids), tok.decode(template_ids(tok, conv)))
        assert max(ids) < model.get_input_embeddings().weight.shape[0]
    prompts = [r["prompt"] for r in _rows(tok, "prompt")]
    # The prompts an RL rollout (and evaluation / collection sampling) feeds the model.
    ro = generate_rollout(model, tok, prompts, max_new_tokens=1, temperature=1.0, seed=0)
    for conv, ids in zip(CONVERSATIONS, ro.query_ids):
        assert ids == template_ids(tok, conv[:-1], add_generation_prompt=True)
        if tok.bos_token_id is not None:
            assert ids.count(tok.bos_token_id) <= 1
    # A conversational preference pair: prompt + chosen == the template's whole conversation.
    conv = CONVERSATIONS[1]
    pair = [{"prompt": conv[:-1], "chosen": conv[-1:],
             "rejected": [{"role": "assistant", "content": "no idea"}]}]
    from rlhfkit.data.formats import normalize
    from rlhfkit.modeling import chat_renderer

    prow = normalize(pair, "preference", source="pairs", render_chat=chat_renderer(tok))[0]
    pds, _ = tokenize_pairs(prow, tok, max_length=512)
    assert pds[0]["prompt_ids"] + pds[0]["chosen_ids"] == template_ids(tok, conv)
    assert pds[0]["chosen_ids"].count(tok.eos_token_id) == 1 and pds[0]["chosen_ids"][-1] == tok.eos_token_id


def _spy_generate(model):
    """Wrap ``model.generate`` to keep the processed scores of every step (the log-its of the
    distribution each token was sampled from), returning the sequences as before."""
    calls = []
    orig = model.generate

    def spy(*args, **kwargs):
        out = orig(*args, **kwargs, output_scores=True, return_dict_in_generate=True)
        calls.append(torch.stack(out.scores, dim=1))  # (b, R, V)
        return out.sequences

    model.generate = spy
    return calls


@pytest.mark.parametrize("arch,template", CELLS)
def test_sampling_distribution_is_the_trained_one(zoo, arch, template):
    """Rollout and evaluation samples are drawn from exactly the distribution whose log-probs are
    trained on, although the checkpoint's generation_config.json asks for a repetition penalty,
    n-gram blocking, a minimum length, bad words and more (bug 2)."""
    from rlhfkit.data.collate import response_batch
    from rlhfkit.generation import sample_completions
    from rlhfkit.logprobs import token_logprobs
    from rlhfkit.rl.engine import HFEngine
    from rlhfkit.rl.rollout import generate_rollout

    tok, model = _load(zoo, arch, template)
    prompts = [r["prompt"] for r in _rows(tok, "prompt")]
    calls = _spy_generate(model)
    # the `hf` engine, whose scores the spy sees (test_rollout_engine.py covers the others)
    ro = generate_rollout(model, tok, prompts, num_samples=2, max_new_tokens=10, temperature=0.7, seed=0,
                          engine=HFEngine())
    scores = calls[-1]  # (B, R, V) one chunk
    p = ro.prompt_width
    sampled = torch.log_softmax(scores.float(), -1)  # (B, R, V)
    for i, resp in enumerate(ro.response_ids):
        gen_lp = sampled[i, torch.arange(len(resp)), torch.tensor(resp)]
        ours = ro.logprobs[i, p - 1:p - 1 + len(resp)]
        assert torch.allclose(gen_lp, ours, atol=2e-4), (arch, template, (gen_lp - ours).abs().max())
    # The rollout really repeats tokens and stops early when the policy says so: no penalty, no
    # n-gram blocking applied (with them, a bigram never repeats within a response).
    rows = sample_completions(model, tok, prompts, max_new_tokens=10, temperature=1.0, seed=1,
                              return_ids=True)
    scores = calls[-1]
    b = response_batch([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows], tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                  position_ids=b["position_ids"], use_cache=False).logits, b["input_ids"])
    for i, r in enumerate(rows):
        n_p, c = len(r["prompt_ids"]), r["completion_ids"]
        gen_lp = torch.log_softmax(scores[i].float(), -1)[torch.arange(len(c)), torch.tensor(c)]
        assert torch.allclose(gen_lp, lp[i, n_p - 1:n_p - 1 + len(c)], atol=2e-4)


@pytest.mark.parametrize("arch,template", CELLS)
def test_train_mode_first_ratio_is_one_and_dpo_starts_at_ln2(zoo, arch, template):
    """Dropout reaches every module: in train mode the policy's log-probs equal the rollout's (first
    PPO ratio 1) and the DPO loss of the untrained policy against its reference is ln 2 (bug 5)."""
    from rlhfkit.data.collate import PairCollator, tokenize_pairs
    from rlhfkit.logprobs import sequence_logprobs, token_logprobs
    from rlhfkit.losses import dpo_loss, ppo_policy_loss
    from rlhfkit.rl.rollout import generate_rollout

    tok, policy = _load(zoo, arch, template)
    prompts = [r["prompt"] for r in _rows(tok, "prompt")]
    ro = generate_rollout(policy, tok, prompts, num_samples=2, max_new_tokens=8, temperature=0.7, seed=0)
    policy.train()
    logits = policy(**ro.model_inputs(), use_cache=False).logits
    lp = token_logprobs(logits, ro.input_ids, 0.7)
    _, m = ppo_policy_loss(lp, ro.logprobs, torch.ones_like(lp), ro.token_mask)
    assert m["ratio"] == pytest.approx(1.0, abs=1e-5) and m["approx_kl"] < 1e-9

    _, ref = _load(zoo, arch, template)
    ref.eval()
    pairs, _ = tokenize_pairs([{"prompt": p, "chosen": "yes, sure.", "rejected": "no, never!"}
                               for p in prompts],
                              tok, max_length=CONTEXT)
    batch = PairCollator(tok.pad_token_id)([pairs[i] for i in range(len(pairs))])
    pol, _ = sequence_logprobs(policy, batch)
    with torch.no_grad():
        rf, _ = sequence_logprobs(ref, batch)
    n = len(pairs)
    loss, _ = dpo_loss(pol[:n], pol[n:], rf[:n], rf[n:], beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.parametrize("arch,template", CELLS)
def test_packed_sft_loss_equals_unpacked(zoo, arch, template):
    """Packed examples never see each other: the packed batch's summed NLL and token count equal
    the unpacked batch's (bug 1)."""
    from rlhfkit.data.collate import SFTCollator, pack, take, tokenize_sft
    from rlhfkit.train.sft import batch_nll

    tok, model = _load(zoo, arch, template)
    rows = _rows(tok, "sft") + [{"prompt": "", "completion": "plain text, no template"}]
    ds, _ = tokenize_sft(rows, tok, max_length=CONTEXT)
    collate = SFTCollator(tok.pad_token_id, "right", completion_only=False)
    with torch.no_grad():
        nll_u, n_u = batch_nll(model, collate(take(ds, list(range(len(ds))))))
        # One block holds every example (none is split, which would restart it as a fresh
        # sequence); positions restart per example, so they stay below the context.
        packed = pack(ds, sum(len(x) for x in ds["input_ids"]))
        assert len(packed) == 1 and max(packed[0]["position_ids"]) < CONTEXT
        blocks = [take(packed, [i])[0] for i in range(len(packed))]
        nll_p, n_p = batch_nll(model, collate(blocks))
    assert int(n_p) == int(n_u)
    assert nll_p.item() == pytest.approx(nll_u.item(), rel=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_padding_free_batches_equal_padded(zoo, arch):
    """Every family takes the padding-free layout (bin-packed rows, 4D block-diagonal mask; the
    defaults of `rlhf sft / reward / dpo`): SFT NLL, DPO sequence log-probs, and reward scores read
    at each sequence's last token (also with LoRA on the reward model) equal the padded batch's.
    The template does not matter here (one per architecture); tests/test_padding_free.py compares
    gradients."""
    from rlhfkit.data.collate import PairCollator, SFTCollator, take, tokenize_pairs, tokenize_sft
    from rlhfkit.logprobs import sequence_logprobs
    from rlhfkit.modeling import apply_lora
    from rlhfkit.scoring import raw_rewards
    from rlhfkit.train.sft import batch_nll

    tok, model = _load(zoo, arch, "chatml")
    model.eval()
    ds, _ = tokenize_sft(_rows(tok, "sft") + [{"prompt": "hi", "completion": "plain text, no template"}], tok,
                         max_length=CONTEXT)
    ex = take(ds, list(range(len(ds))))
    prompts = [r["prompt"] for r in _rows(tok, "prompt")]
    rows = [{"prompt": p, "chosen": "a fine answer, a few more words.", "rejected": "bad"} for p in prompts]
    pairs, _ = tokenize_pairs(rows, tok, max_length=CONTEXT)
    pairs = take(pairs, list(range(len(pairs))))
    padded, free = PairCollator(tok.pad_token_id), PairCollator(tok.pad_token_id, padding_free=True)
    with torch.no_grad():
        nll_p, n_p = batch_nll(model, SFTCollator(tok.pad_token_id)(ex))
        nll_f, n_f = batch_nll(model, SFTCollator(tok.pad_token_id, padding_free=True)(ex))
        assert int(n_f) == int(n_p) and nll_f.item() == pytest.approx(nll_p.item(), rel=1e-5)
        for want, got in zip(sequence_logprobs(model, padded(pairs)), sequence_logprobs(model, free(pairs))):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)

    _, rm = _load(zoo, arch, "chatml", reward=True)
    for net in (rm, apply_lora(rm, r=4, alpha=8, dropout=0.0, target_modules="all-linear")):
        net.eval()
        torch.testing.assert_close(raw_rewards(net, free(pairs)), raw_rewards(net, padded(pairs)),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,template", CELLS)
def test_reward_score_ignores_padding_side_and_lora_trains_and_saves(zoo, arch, template, tmp_path):
    """A reward model reads the same score from left- and right-padded batches; LoRA on it uses the
    sequence-classification task type, trains the head and merges into a plain directory (bug 6)."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.data.collate import PairCollator, tokenize_pairs
    from rlhfkit.losses import bradley_terry_loss
    from rlhfkit.modeling import apply_lora, reward_head, save_hf
    from rlhfkit.scoring import raw_rewards

    tok, rm = _load(zoo, arch, template, reward=True)
    prompts = [r["prompt"] for r in _rows(tok, "prompt")]
    pairs, _ = tokenize_pairs([{"prompt": p, "chosen": "a fine answer.", "rejected": "bad"} for p in prompts],
                              tok, max_length=CONTEXT)
    ex = [pairs[i] for i in range(len(pairs))]
    right = raw_rewards(rm, PairCollator(tok.pad_token_id, "right")(ex))
    left = raw_rewards(rm, PairCollator(tok.pad_token_id, "left")(ex))
    assert torch.allclose(left, right, atol=1e-5)

    head0 = reward_head(rm).weight.detach().clone()
    rm = apply_lora(rm, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    opt = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=1e-2)
    batch = PairCollator(tok.pad_token_id)(ex)
    n = len(ex)
    for _ in range(3):
        r = rm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
               position_ids=batch["position_ids"], use_cache=False).logits[:, 0]
        loss, _ = bradley_terry_loss(r[:n], r[n:])
        loss.backward()
        opt.step()
        opt.zero_grad()
    rm.eval()
    trained = raw_rewards(rm, batch)
    save_hf(rm, tok, tmp_path / "rm")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert not torch.equal(reward_head(plain).weight, head0)  # the head was trained and saved
    assert torch.allclose(raw_rewards(plain, batch), trained, atol=1e-4)


@pytest.mark.parametrize("arch,template", CELLS)
def test_save_reload_with_plain_transformers_and_lora_merge(zoo, arch, template, tmp_path):
    """A saved policy reloads with `transformers` alone to identical logits (and its tokenizer to
    identical ids); a LoRA policy merges into a plain model with the adapter's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit.modeling import apply_lora, save_hf

    tok, model = _load(zoo, arch, template)
    model.eval()
    ids = torch.tensor([template_ids(tok, CONVERSATIONS[0])])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    save_hf(model, tok, tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    plain_tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert template_ids(plain_tok, CONVERSATIONS[0]) == ids[0].tolist()
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, want, atol=1e-5)

    lora = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: it changes the logits
        adapted = lora(input_ids=ids).logits
    assert not torch.allclose(adapted, want, atol=1e-3)
    save_hf(lora, tok, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted, atol=1e-4)


@pytest.mark.parametrize("arch,template", CELLS)
def test_prompt_longer_than_the_context_is_cut_with_a_warning(zoo, arch, template, caplog):
    """A prompt longer than the model's context is cut from the left (keeping BOS), with a warning
    that counts it, and sampling goes on: never a crash."""
    from rlhfkit.generation import sample_completions
    from rlhfkit.rl.rollout import generate_rollout

    tok, model = _load(zoo, arch, template)
    long = [{"role": "user", "content": "tell me about the sea " * 20}]
    prompts = [tok.apply_chat_template(long, tokenize=False, add_generation_prompt=True),
               _rows(tok, "prompt")[0]["prompt"]]
    full = template_ids(tok, long, add_generation_prompt=True)
    assert len(full) > CONTEXT
    with caplog.at_level(logging.WARNING):
        ro = generate_rollout(model, tok, prompts, max_new_tokens=8, temperature=1.0, seed=0)
    assert "1 of 2 prompts were longer than 56 tokens" in caplog.text
    cut = ro.query_ids[0]
    assert len(cut) == CONTEXT - 8 and cut[-10:] == full[-10:]
    if tok.bos_token_id is not None and full[0] == tok.bos_token_id:
        assert cut[0] == tok.bos_token_id
    assert ro.input_ids.shape[1] <= CONTEXT
    rows = sample_completions(model, tok, prompts, max_new_tokens=8, seed=0, return_ids=True)
    assert len(rows[0]["prompt_ids"]) == CONTEXT - 8
