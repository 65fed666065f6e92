"""DPO stage: it matches TRL on a fixed batch, starts at ln 2, raises the synthetic world's gold
reward, and its mechanics are invariant: precomputed == live reference, LoRA keeps one copy of
the base, 2 processes == 1, stop + resume == uninterrupted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import DPOConfig, config_from_dict
from rlhfkit.errors import ConfigError
from rlhfkit.train.common import read_metrics
from rlhfkit.train.dpo import train

from conftest import run_cli

# One worker runs the whole file, so the SFT model and the preference data are built once.
pytestmark = pytest.mark.xdist_group("dpo")


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def prefs(world, sft_model, tmp_path_factory) -> dict[str, Path]:
    """Preference pairs on SFT samples: 4 samples per prompt, 3 pairs each, labelled by a
    simulated labeler (Bradley-Terry on the gold reward, temperature 0.1)."""
    from rlhfkit.synthetic.preferences import preference_splits

    return preference_splits(sft_model, world, tmp_path_factory.mktemp("prefs"), seed=1)


def cfg_for(sft_model: Path, prefs: dict, out: Path, **kw) -> DPOConfig:
    base = dict(model=str(sft_model), data=str(prefs["train"]), eval_data=str(prefs["eval"]),
                output_dir=str(out),
                learning_rate=5e-4, per_device_batch_size=8, max_steps=4, max_length=96, log_every=1,
                warmup_ratio=0.0, lr_scheduler="linear", seed=3, eval_sample_prompts=0)
    base.update(kw)
    return DPOConfig(**base)


def losses_of(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


# ----------------------------------------------------------------------------- config and data


def test_config_rejects_keys_the_loss_type_would_ignore(sft_model, prefs):
    with pytest.raises(ConfigError, match="label_smoothing"):
        config_from_dict(DPOConfig, {"model": str(sft_model), "data": str(prefs["train"]),
                                     "loss_type": "cdpo"})
    with pytest.raises(ConfigError, match="label_smoothing"):
        config_from_dict(DPOConfig, {"model": str(sft_model), "data": str(prefs["train"]),
                                     "label_smoothing": 0.1})
    with pytest.raises(ConfigError, match="loss_type"):
        config_from_dict(DPOConfig, {"model": str(sft_model), "data": str(prefs["train"]),
                                     "loss_type": "kto"})


def test_rankings_expand_to_pairs_and_ties_are_dropped(tmp_path):
    from rlhfkit.train.data import load_split

    ranking = tmp_path / "ranking.jsonl"
    ranking.write_text(json.dumps({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 2, 2]}) + "\n"
                       + json.dumps({"prompt": "q", "responses": ["x", "y"]}) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                     + json.dumps({"prompt": "p", "chosen": "c", "rejected": "d", "tie": True}) + "\n")
    cfg = DPOConfig(model="some/model", data=str(ranking), eval_data=str(pairs))
    train_rows, eval_rows, report = load_split(cfg, "pairs")
    # [1, 2, 2]: a > b, a > c, (b, c) tied; the second ranking lists best first: x > y
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in train_rows] == [
        ("p", "a", "b"), ("p", "a", "c"), ("q", "x", "y")]
    assert report["train_pairs"]["pairs_from_rankings"] == 3
    assert [(r["chosen"], r["rejected"]) for r in eval_rows] == [("a", "b")]
    assert report["eval_pairs"]["ties_dropped"] == 1


def test_tie_pairs_are_dropped_with_a_count_never_trained_as_wins(world, tmp_path, caplog):
    # DPO has no tie likelihood: a tied pair (explicit or implicit prompt, any spelling of the flag)
    # is dropped, counted in the report and logged, never trained as chosen > rejected.
    import logging

    from rlhfkit.errors import DataError
    from rlhfkit.train.data import load_split

    rows = [{"prompt": "p", "chosen": " a", "rejected": " b", "tie": True},
            {"prompt": "p", "chosen": " c", "rejected": " d", "tie": False},
            {"prompt": "q", "chosen": " e", "rejected": " f", "tie": "true"},
            {"prompt": "q", "chosen": " g", "rejected": " h"}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    implicit = tmp_path / "implicit.jsonl"
    implicit.write_text(json.dumps({"chosen": "Q: hi A: yes", "rejected": "Q: hi A: no", "tie": 1}) + "\n"
                        + json.dumps({"chosen": "Q: hi A: ok", "rejected": "Q: hi A: bad"}) + "\n")
    cfg = DPOConfig(model="some/model", data=str(data), eval_data=str(implicit))
    with caplog.at_level(logging.INFO, logger="rlhfkit.train.data"):
        train_rows, eval_rows, report = load_split(cfg, "pairs")
    assert [(r["chosen"], r["rejected"]) for r in train_rows] == [(" c", " d"), (" g", " h")]
    assert [(r["chosen"], r["rejected"]) for r in eval_rows] == [(" ok", " bad")]
    assert report["train_pairs"]["ties_dropped"] == 2 and report["eval_pairs"]["ties_dropped"] == 1
    assert "dropped 2 tie pairs" in caplog.text
    # a file of ties only leaves nothing to train on: a clear error, not an empty run
    only_ties = tmp_path / "ties.jsonl"
    only_ties.write_text("".join(json.dumps({**r, "tie": True}) + "\n" for r in rows))
    with pytest.raises(DataError, match="every pair is a tie"):
        train(DPOConfig(model=str(world / "base"), data=str(only_ties), eval_fraction=0.0,
                        output_dir=str(tmp_path / "out")))


def test_conversational_pairs_get_eos_on_responses_only(world, tmp_path):
    from rlhfkit.data.collate import tokenize_pairs
    from rlhfkit.modeling import chat_renderer, load_tokenizer
    from rlhfkit.train.data import load_split

    tok = load_tokenizer(str(world / "base"))
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"prompt": [{"role": "user", "content": "review of the film :"}],
                                "chosen": [{"role": "assistant", "content": "it was good ."}],
                                "rejected": [{"role": "assistant", "content": "it was bad ."}]}) + "\n")
    cfg = DPOConfig(model=str(world / "base"), data=str(data), eval_fraction=0.0)
    rows, _, _ = load_split(cfg, "pairs", render_chat=chat_renderer(tok))
    assert "review of the film" in rows[0]["prompt"] and "good" in rows[0]["chosen"]
    ds, _ = tokenize_pairs(rows, tok, max_length=96)
    eos = tok.eos_token_id
    assert ds[0]["chosen_ids"][-1] == eos and ds[0]["rejected_ids"][-1] == eos
    assert eos not in ds[0]["prompt_ids"]


def test_cli_reports_a_bad_variant_key(sft_model, prefs, tmp_path):
    r = run_cli("dpo", f"model={sft_model}", f"data={prefs['train']}", "loss_type=cdpo",
                f"output_dir={tmp_path / 'x'}")
    assert r.returncode == 2 and "label_smoothing" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- parity with TRL


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_parity_with_trl(world, tmp_path, loss_type):
    """Our loss, per-pair log-probs and rewards equal TRL's DPOTrainer on one fixed batch."""
    pytest.importorskip("trl", reason="TRL is the parity peer: install the 'test' extra "
                                      "(pip install -c constraints.txt -e '.[test]')")
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    from rlhfkit.data.collate import PairCollator, tokenize_pairs
    from rlhfkit.logprobs import sequence_logprobs
    from rlhfkit.losses import dpo_loss
    from rlhfkit.modeling import load_causal_lm, load_tokenizer

    # Reference = the world's base model; policy = the base with fixed noise, so log-ratios are not 0.
    tok = load_tokenizer(str(world / "base"))
    noisy = load_causal_lm(str(world / "base"), tok)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.03 * torch.randn(p.shape, generator=g))
    noisy.save_pretrained(tmp_path / "policy")
    sft = read_jsonl(world / "sft.jsonl")[:7]
    rows = [{"prompt": sft[i]["prompt"], "chosen": sft[i]["completion"], "rejected": sft[i + 1]["completion"]}
            for i in range(6)]
    beta = 0.1

    # Ours: the stage's tokenisation, collation, one concatenated forward, dpo_loss.
    ds, _ = tokenize_pairs(rows, tok, max_length=512)
    batch = PairCollator(tok.pad_token_id)(ds.to_list())
    policy = load_causal_lm(str(tmp_path / "policy"), tok).eval()
    ref = load_causal_lm(str(world / "base"), tok).eval()
    with torch.no_grad():
        lp, n_tok = sequence_logprobs(policy, batch)
        lr, _ = sequence_logprobs(ref, batch)
    (pc, pr), (rc, rr), (nc, nr) = lp.chunk(2), lr.chunk(2), n_tok.chunk(2)
    loss, m = dpo_loss(pc, pr, rc, rr, loss_type=loss_type, beta=beta, chosen_tokens=nc, rejected_tokens=nr)

    # TRL: its own preprocessing, collator, loss and metrics, on separate copies of the same weights.
    # fp32 explicitly: TRL's default bf16 would autocast its (prepared) reference model.
    args = TRLConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type=[loss_type], max_length=None,
                     per_device_train_batch_size=len(rows), report_to="none", use_cpu=True, bf16=False,
                     fp16=False, save_strategy="no", logging_strategy="no", disable_tqdm=True)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tmp_path / "policy"),
                         ref_model=AutoModelForCausalLM.from_pretrained(world / "base"), args=args,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    trl_rows = [trainer.train_dataset[i] for i in range(len(rows))]  # TRL's tokenisation, in order
    trl_batch = trainer._prepare_inputs(trainer.data_collator(trl_rows))
    # Same tokens and the same response mask (chosen rows first in both).
    assert torch.equal(trl_batch["input_ids"], batch["input_ids"])
    assert torch.equal(trl_batch["completion_mask"], batch["response_mask"])
    trainer.model.eval()  # metrics then land in _metrics["eval"]
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, trl_batch)
        # compute_ref_log_probs runs any model through TRL's log-prob path: per-pair values.
        trl_pc, trl_pr = trainer.compute_ref_log_probs(trainer.model, trl_batch)
        trl_rc, trl_rr = trainer.compute_ref_log_probs(trainer.ref_model, trl_batch)
    trl_m = {k: v[-1] for k, v in trainer._metrics["eval"].items()}

    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, trl_loss, **close)
    for ours, theirs in ((pc, trl_pc), (pr, trl_pr), (rc, trl_rc), (rr, trl_rr)):
        torch.testing.assert_close(ours, theirs.float(), **close)
    for ours, theirs in (("rewards/chosen", "rewards/chosen"), ("rewards/rejected", "rewards/rejected"),
                         ("margins", "rewards/margins"), ("accuracy", "rewards/accuracies"),
                         ("logps/chosen", "logps/chosen"), ("logps/rejected", "logps/rejected")):
        assert m[ours] == pytest.approx(trl_m[theirs], rel=1e-5, abs=1e-5), ours
    assert abs(m["margins"]) > 0.01  # a non-trivial batch: policy and reference do differ


# ----------------------------------------------------------------------------- training


def test_step0_is_ln2_and_precomputed_reference_matches_live(sft_model, prefs, tmp_path):
    live = train(cfg_for(sft_model, prefs, tmp_path / "live"))
    pre_cfg = cfg_for(sft_model, prefs, tmp_path / "pre", precompute_ref_logprobs=True)
    pre = train(pre_cfg)
    m_live = read_metrics(tmp_path / "live")
    # Item 26: at step 0 (the first update's forward, and the step-0 held-out eval) policy == reference.
    assert m_live[0]["step"] == 0 and m_live[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert m_live[1]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert m_live[1]["margins"] == pytest.approx(0.0, abs=1e-6)
    l_live, l_pre = losses_of(tmp_path / "live"), losses_of(tmp_path / "pre")
    # And it learns: the held-out loss falls (the per-step training losses are on different
    # batches, so their first-vs-last order depends on which pairs each step drew).
    s_live = json.loads((tmp_path / "live" / "summary.json").read_text())
    assert len(l_live) == 4 and s_live["final_eval_loss"] < s_live["initial_eval_loss"], s_live
    assert l_pre == pytest.approx(l_live, rel=1e-4, abs=1e-5)
    wl, wp = weights(live), weights(pre)
    for k in wl:
        torch.testing.assert_close(wl[k], wp[k], rtol=1e-3, atol=1e-5)
    s = json.loads((tmp_path / "pre" / "summary.json").read_text())
    assert s["ref_logprobs_cache"] == "computed"
    cached = list((tmp_path / "pre" / "ref_logprobs").glob("*.safetensors"))
    assert len(cached) == 1
    table = load_file(str(cached[0]))
    assert table["train"].shape == (s["train_pairs"], 2) and table["eval"].shape == (s["eval_pairs"], 2)

    # A repeated run reads the cache (no new file, same numbers) ...
    mtime = cached[0].stat().st_mtime_ns
    train(pre_cfg)
    assert json.loads((tmp_path / "pre" / "summary.json").read_text())["ref_logprobs_cache"] == "hit"
    assert cached[0].stat().st_mtime_ns == mtime and losses_of(tmp_path / "pre") == l_pre
    # ... and a change that alters the tokenised data misses it.
    pre_cfg.max_length = 64
    train(pre_cfg)
    assert json.loads((tmp_path / "pre" / "summary.json").read_text())["ref_logprobs_cache"] == "computed"
    assert len(list((tmp_path / "pre" / "ref_logprobs").glob("*.safetensors"))) == 2


@pytest.fixture(scope="module")
def rich_prefs(world, sft_model, tmp_path_factory) -> dict[str, Path]:
    """More labels for the gold test: 6 samples x 6 pairs per prompt (the RL tests' reward-model
    data). With 4 x 3 pairs the gold gain of DPO depended on the seed (-0.04 to +0.28)."""
    from rlhfkit.synthetic.preferences import preference_splits

    return preference_splits(sft_model, world, tmp_path_factory.mktemp("rich-prefs"), samples_per_prompt=6,
                             pairs_per_prompt=6, seed=1)


def test_dpo_raises_gold_reward_with_kl_reported(world, sft_model, rich_prefs, tmp_path):
    from rlhfkit.testing.policy_check import evaluate_policy

    cfg = cfg_for(sft_model, rich_prefs, tmp_path / "dpo", per_device_batch_size=16, max_steps=100, beta=0.1,
                  learning_rate=2e-4, warmup_ratio=0.1, log_every=10, eval_sample_prompts=30,
                  gold="synthetic")
    final = train(cfg)
    s = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    assert s["initial_eval_kl"] == pytest.approx(0.0, abs=1e-4)  # samples of the reference itself
    assert s["final_eval_kl"] > 0.2, s  # sampled sequence KL, reported and positive (measured 0.5-0.9)
    assert s["final_eval_accuracy"] > 0.53 and s["final_eval_margins"] > 0, s  # measured 0.56-0.62
    # Gold reward on 240 held-out samples (30 prompts x 8), same seed for both policies.
    prompts = [r["prompt"] for r in read_jsonl(world / "prompts_eval.jsonl")] * 8
    gold_sft = evaluate_policy(sft_model, prompts, seed=7)["gold_mean"]
    gold_dpo = evaluate_policy(final, prompts, seed=7)["gold_mean"]
    print(f"gold: SFT {gold_sft:.3f} -> DPO {gold_dpo:.3f}; KL {s['final_eval_kl']:.2f}; "
          f"in-run gold {s['initial_eval_gold']:.3f} -> {s['final_eval_gold']:.3f}")
    # Measured gains 0.16-0.27 over DPO seeds 0-3 and two builds of the test world.
    assert gold_dpo >= gold_sft + 0.08, (gold_sft, gold_dpo, s)


def test_lora_uses_the_disabled_adapter_as_reference(sft_model, prefs, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    import rlhfkit.train.dpo as dpo

    loaded = []
    original = dpo.load_causal_lm

    def counting_load(*args, **kw):
        loaded.append(args[0])
        return original(*args, **kw)

    monkeypatch.setattr(dpo, "load_causal_lm", counting_load)
    final = train(cfg_for(sft_model, prefs, tmp_path / "lora", lora_r=8, lora_alpha=16, learning_rate=5e-3,
                          max_steps=6, eval_sample_prompts=8))
    assert loaded == [str(sft_model)]  # one copy of the base weights: no separate reference model
    m = read_metrics(tmp_path / "lora")
    # LoRA starts at B = 0, so the adapter-disabled reference equals the policy at step 0 ...
    assert m[1]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert m[0]["eval_kl"] == pytest.approx(0.0, abs=1e-4)
    # ... and differs from it after training (KL > 0 shows the reference is not the live policy).
    s = json.loads((tmp_path / "lora" / "summary.json").read_text())
    assert s["reference"] == "adapter disabled" and s["final_eval_kl"] > 0
    # (That DPO moves the policy the right way is checked on full fine-tuning, where the gold
    # reward rises; a 6-step LoRA run on this tiny model is too short to show it reliably.)
    w0, w1 = weights(sft_model), weights(final)
    assert set(w0) == set(w1)  # merged into a plain model
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_simpo_trains_without_a_reference_model(sft_model, prefs, tmp_path, monkeypatch):
    import rlhfkit.train.dpo as dpo

    loaded = []
    original = dpo.load_causal_lm
    monkeypatch.setattr(dpo, "load_causal_lm", lambda *a, **kw: loaded.append(a[0]) or original(*a, **kw))
    train(cfg_for(sft_model, prefs, tmp_path / "simpo", loss_type="simpo", beta=2.0, simpo_gamma=0.5,
                  rpo_alpha=0.1, learning_rate=2e-4))
    assert len(loaded) == 1  # reference-free: no second model when nothing samples the KL
    s = json.loads((tmp_path / "simpo" / "summary.json").read_text())
    assert s["reference"] == "none" and s["final_eval_loss"] < s["initial_eval_loss"], s
    assert "nll" in read_metrics(tmp_path / "simpo")[1]


def test_grad_accumulation_equals_bigger_batch(sft_model, prefs, tmp_path):
    # The loss is normalised by the step's pair count, not per micro-batch.
    a = train(cfg_for(sft_model, prefs, tmp_path / "a", per_device_batch_size=8))
    b = train(cfg_for(sft_model, prefs, tmp_path / "b", per_device_batch_size=2,
                      gradient_accumulation_steps=4))
    assert losses_of(tmp_path / "a") == pytest.approx(losses_of(tmp_path / "b"), rel=1e-5)
    wa, wb = weights(a), weights(b)
    # Adam divides by sqrt(v) + eps (1e-8): for a coordinate whose gradient is itself ~1e-8, the float
    # noise of summing micro-batches in another order becomes an update difference of up to lr per
    # step (seen: 1 of 16,384 entries 2.3e-5 apart). So nearly every coordinate agrees to 1e-5 and
    # none is further apart than the 4 steps x lr 5e-4 Adam can move it.
    for k in wa:
        close = torch.isclose(wa[k], wb[k], rtol=1e-4, atol=1e-5)
        assert close.float().mean() >= 0.999, (k, int((~close).sum()), close.numel())
        assert (wa[k] - wb[k]).abs().max() <= 4 * 5e-4, k


def test_stop_and_resume_equals_uninterrupted(sft_model, prefs, tmp_path):
    full = train(cfg_for(sft_model, prefs, tmp_path / "full", max_steps=6, precompute_ref_logprobs=True))
    cfg = cfg_for(sft_model, prefs, tmp_path / "split", max_steps=6, precompute_ref_logprobs=True,
                  stop_after=3, save_every=1)
    train(cfg)
    assert not (tmp_path / "split" / "final").exists()
    cfg.stop_after, cfg.resume = None, True
    resumed = train(cfg)
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["ref_logprobs_cache"] == "hit"
    wf, wr = weights(full), weights(resumed)
    for k in wf:
        assert torch.equal(wf[k], wr[k]), k  # bitwise on CPU
    steps = [r["step"] for r in read_metrics(tmp_path / "split")]
    assert steps == list(range(0, 7)), steps
    assert losses_of(tmp_path / "full") == losses_of(tmp_path / "split")


@pytest.mark.slow
def test_two_processes_equal_one(sft_model, prefs, tmp_path):
    """2 gloo processes with batch b (and a sharded reference precompute) follow 1 process with 2b."""
    common = [f"model={sft_model}", f"data={prefs['train']}", f"eval_data={prefs['eval']}",
              "learning_rate=5e-4", "max_steps=4", "max_length=96", "log_every=1", "warmup_ratio=0.0",
              "seed=5", "eval_sample_prompts=4", "precompute_ref_logprobs=true"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    accelerate = str(Path(sys.executable).parent / "accelerate")
    two = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                          "-m", "rlhfkit", "dpo", *common, "per_device_batch_size=4",
                          f"output_dir={tmp_path / 'two'}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "rlhfkit", "dpo", *common, "per_device_batch_size=8",
                          f"output_dir={tmp_path / 'one'}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["processes"] == 2 and s2["global_batch"] == 8
    # The sharded precompute reassembles the pairs in their original order.
    c1 = load_file(str(next((tmp_path / "one" / "ref_logprobs").glob("*.safetensors"))))
    c2 = load_file(str(next((tmp_path / "two" / "ref_logprobs").glob("*.safetensors"))))
    for split in ("train", "eval"):
        torch.testing.assert_close(c1[split], c2[split], rtol=1e-5, atol=1e-4)
    l1, l2 = losses_of(tmp_path / "one"), losses_of(tmp_path / "two")
    assert len(l1) == 4 and l1 == pytest.approx(l2, rel=1e-4)
    e1, e2 = read_metrics(tmp_path / "one")[-1], read_metrics(tmp_path / "two")[-1]
    assert e1["eval_loss"] == pytest.approx(e2["eval_loss"], rel=1e-4)
    assert e2["eval_kl"] > 0
    w1, w2 = weights(tmp_path / "one" / "final"), weights(tmp_path / "two" / "final")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-3, atol=1e-5)
