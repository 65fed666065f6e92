"""Interop with TRL (the reference peer, trl 1.16): what rlhfkit writes, TRL reads unchanged.

- Preferences exported by `rlhf label export` train TRL's ``DPOTrainer`` (first loss ln 2) and
  ``RewardTrainer`` (whose loss on our reward model equals what our scorer gives), and both see the
  tokens our stages see.
- The `rlhf reward` directory is a TRL ``GRPOTrainer`` reward function. TRL scores ``prompt +
  completion`` as one string with no BOS, no EOS and no normalisation, while ``RewardScorer``
  scores ``BOS + prompt + response + EOS`` and applies the stored ``reward_offset``/
  ``reward_scale``; the tests pin that relation exactly. The two disagree widely (the score read at
  the last completion token is not the score at EOS that the model was trained on), so a GRPO run
  that should optimise what `rlhf reward` learned passes ``RewardScorer(dir).score`` as a reward
  function rather than the directory.
- The `rlhf sft` directory loads in TRL's ``SFTTrainer`` (and as the DPO policy) with the logits of
  a plain ``transformers`` load, and TRL's SFT tokens equal ours.
- An export where some judgement has no strength (left blank, or K-way rankings as pairs) writes
  margin 0.0 there (it used to write ``"margin": null``, which TRL's ``RewardTrainer`` cannot
  collate), and trains TRL's ``RewardTrainer`` unchanged.

TRL is imported inside the tests (importing it costs seconds at collection) and is never skipped:
it is in the 'test' extra, and a missing TRL fails these tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

# One worker runs the whole file: the preference export and the reward model are built once.
pytestmark = [
    pytest.mark.xdist_group("trl_interop"),
    pytest.mark.usefixtures("one_thread", "quiet"),
    pytest.mark.slow,  # builds the synthetic world, an SFT policy and a reward model, then trains in TRL
    # transformers 5 renamed gradient_checkpointing -> activation_checkpointing; TRL 1.16 uses the old names.
    pytest.mark.filterwarnings("ignore:.*checkpointing.*:FutureWarning"),
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trl_args(cls, out: Path, **kw):
    """A TRL config for a short, quiet, seeded fp32 CPU run (TRL's default is bf16)."""
    base = dict(output_dir=str(out), report_to=[], use_cpu=True, bf16=False, fp16=False,
                dataloader_num_workers=0, save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
                data_seed=0)
    return cls(**{**base, **kw})


def load_json_dataset(path: Path, cache: Path):
    """The exported JSONL as a user loads it; the arrow cache stays under tmp_path."""
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.fixture(scope="module")
def quiet():
    """No transformers info logs (level restored afterwards) and no download/map progress bars
    (left off, as rlhfkit's own loaders leave them)."""
    from transformers.utils import logging as hf_logging

    from rlhfkit.modeling import quiet_hf_progress

    level = hf_logging.get_verbosity()
    quiet_hf_progress()
    hf_logging.set_verbosity_error()
    yield
    hf_logging.set_verbosity(level)


@pytest.fixture(scope="module")
def prefs(world, sft_model, tmp_path_factory) -> Path:
    """`rlhf collect` (4 SFT samples for each of 16 prompts, 2 pair tasks per prompt) ->
    `rlhf label simulate` (2 simulated annotators, gold reward, T = 0.1) -> `rlhf label export`
    with its defaults (one row per judgement, ties dropped): 32 preference rows."""
    from rlhfkit.config import CollectConfig, LabelExportConfig, LabelSimulateConfig
    from rlhfkit.feedback.collect import collect
    from rlhfkit.feedback.export import export
    from rlhfkit.feedback.simulate import simulate_labels

    root = tmp_path_factory.mktemp("trl-prefs")
    store = str(root / "fb.db")
    collect(CollectConfig(store=store, project="trl", prompts=str(world / "prompts.jsonl"), max_prompts=16,
                          models=[str(sft_model)], model_names=["sft"], num_samples=4, max_new_tokens=32,
                          pairs_per_prompt=2, seed=0, output_dir=str(root / "collect")))
    simulate_labels(LabelSimulateConfig(store=store, project="trl", num_annotators=2, temperature=0.1, seed=0,
                                        output_dir=str(root / "simulate")))
    return export(LabelExportConfig(store=store, project="trl", output=str(root / "prefs.jsonl")))


@pytest.fixture(scope="module")
def reward_model(sft_model, prefs, tmp_path_factory) -> Path:
    """`rlhf reward` on the exported preferences, normalize=mean_std so that the stored
    reward_offset and reward_scale are both non-trivial."""
    from rlhfkit.config import RewardConfig
    from rlhfkit.train.reward import train

    out = tmp_path_factory.mktemp("trl-rm")
    return Path(train(RewardConfig(model=str(sft_model), data=str(prefs), output_dir=str(out), max_steps=4,
                                   per_device_batch_size=8, max_length=96, eval_fraction=0.0,
                                   normalize="mean_std", learning_rate=1e-3, seed=0)))


# ----------------------------------------------------------------------------- exported preferences


def test_exported_preferences_train_trl_dpo_from_our_sft_model(sft_model, prefs, tmp_path):
    """The export is TRL's standard preference format: DPOTrainer takes the file as loaded and our
    SFT directory as the policy (and, copied, as the reference), tokenises every row as our DPO
    stage does, and its first loss is ln 2 (policy == reference)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import is_conversational

    from rlhfkit.data.collate import tokenize_pairs

    rows = read_jsonl(prefs)
    ds = load_json_dataset(prefs, tmp_path / "hf")
    assert len(ds) == len(rows) >= 24
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names) and not is_conversational(ds[0])

    args = trl_args(DPOConfig, tmp_path / "dpo", max_steps=3, per_device_train_batch_size=8,
                    learning_rate=1e-3, beta=0.1)
    trainer = DPOTrainer(model=str(sft_model), train_dataset=ds, args=args)  # tokenizer: from the directory
    assert len(trainer.train_dataset) == len(rows)  # no row dropped or truncated away
    # TRL's tokenisation of each exported row == our DPO stage's (BOS + prompt | response + EOS).
    ours, dropped = tokenize_pairs(rows, AutoTokenizer.from_pretrained(sft_model), max_length=1024)
    assert dropped == 0
    for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert list(trainer.train_dataset[key]) == list(ours[key]), key

    trainer.train()
    log = [h for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 3 and len(log) == 3
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # the first forward: policy == reference
    assert log[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["rewards/margins"]) for h in log)
    assert log[-1]["rewards/margins"] != 0.0  # the policy moved away from the reference
    before = AutoModelForCausalLM.from_pretrained(sft_model).state_dict()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)


def test_exported_preferences_train_trl_reward_trainer_on_our_reward_model(reward_model, prefs, tmp_path):
    """RewardTrainer reads the export unchanged and our reward model directory as its model. Before
    training, its held-out loss, accuracy and margin on the export equal what ``RewardScorer``'s
    raw scores give. TRL subtracts the ``margin`` column whenever the data have one (Llama 2's
    margin loss, which rlhfkit applies only with ``use_margin=true``), and it works on raw logits:
    the stored reward_offset/reward_scale are not applied (a scale would change the loss)."""
    from trl import RewardConfig, RewardTrainer

    from rlhfkit.data.collate import encode_prompt_response
    from rlhfkit.scoring import RewardScorer

    rows = read_jsonl(prefs)
    assert all(isinstance(r["margin"], float) for r in rows)  # simulated annotators always give a strength
    ds = load_json_dataset(prefs, tmp_path / "hf")
    args = trl_args(RewardConfig, tmp_path / "rm", max_steps=3, per_device_train_batch_size=8,
                    per_device_eval_batch_size=len(ds), learning_rate=1e-3)
    trainer = RewardTrainer(model=str(reward_model), train_dataset=ds, eval_dataset=ds, args=args)
    assert len(trainer.train_dataset) == len(rows)

    # Our scorer's framing (BOS + prompt + response + EOS) is the sequence TRL builds from the row.
    scorer = RewardScorer(reward_model, max_length=1024)
    P, C, R = [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    for texts, key in ((C, "chosen_ids"), (R, "rejected_ids")):
        framed = [p + x for p, x in encode_prompt_response(scorer.tokenizer, P, texts, max_length=1024)]
        assert list(trainer.train_dataset[key]) == framed, key
    rc, _ = scorer.score(P, C, normalized=False)
    rr, _ = scorer.score(P, R, normalized=False)
    m = np.array([r["margin"] for r in rows])
    expected_loss = float(np.mean(np.logaddexp(0.0, -(rc - rr - m))))  # -log sigmoid(r_c - r_r - margin)

    metrics = trainer.evaluate()  # one batch of all rows, before any update
    assert metrics["eval_loss"] == pytest.approx(expected_loss, rel=1e-4, abs=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(float(np.mean(rc > rr)), abs=1e-6)
    assert metrics["eval_margin"] == pytest.approx(float(np.mean(rc - rr)), rel=1e-4, abs=1e-5)

    trainer.train()
    assert trainer.state.global_step == 3
    ls = losses(trainer)
    assert len(ls) == 3 and all(math.isfinite(x) for x in ls)


def _responses_file(prefs: Path, out: Path, n_prompts: int) -> Path:
    """The exported texts as an import file for `rlhf collect responses=...` (no sampling)."""
    by_prompt: dict[str, list[str]] = {}
    for r in read_jsonl(prefs):
        for text in (r["chosen"], r["rejected"]):
            texts = by_prompt.setdefault(r["prompt"], [])
            if text not in texts:
                texts.append(text)
    rows = [{"prompt": p, "response": t, "model_id": "sft"}
            for p, texts in list(by_prompt.items())[:n_prompts] for t in texts]
    return write_jsonl(out, rows)


@pytest.mark.parametrize("case", ["strength_left_blank", "ranking_tasks_as_pairs"])
def test_exports_without_strengths_train_trl_reward_trainer(reward_model, prefs, tmp_path, case):
    from trl import RewardConfig, RewardTrainer

    from rlhfkit.config import CollectConfig, LabelExportConfig, LabelSimulateConfig
    from rlhfkit.feedback.collect import collect
    from rlhfkit.feedback.export import export
    from rlhfkit.feedback.simulate import simulate_labels
    from rlhfkit.feedback.store import FeedbackStore

    store = str(tmp_path / "fb.db")
    responses = _responses_file(prefs, tmp_path / "r.jsonl", 8)
    collect(CollectConfig(store=store, project="p", responses=str(responses), pairs_per_prompt=1, seed=0,
                          task_size=3 if case == "ranking_tasks_as_pairs" else 2,
                          output_dir=str(tmp_path / "collect")))
    if case == "strength_left_blank":
        # A person in the labelling UI, who gives the (optional) strength on every other task.
        with FeedbackStore(store) as s:
            ann = s.add_annotator("person", "pw")
            for i, t in enumerate(s.tasks("p")):
                s.submit(t["task_id"], ann.id, choice="A", strength=4 if i % 2 else None,
                         displayed_order=t["response_ids"])
    else:
        simulate_labels(LabelSimulateConfig(store=store, project="p", num_annotators=1, temperature=0.1,
                                            seed=0, output_dir=str(tmp_path / "simulate")))
    data = export(LabelExportConfig(store=store, project="p", output=str(tmp_path / "prefs.jsonl")))
    rows = read_jsonl(data)
    # The situation under test (however a fixed export writes their margin): judgements without a strength.
    assert len(rows) >= 8 and any(r["strength"] is None for r in rows)
    assert all(isinstance(r["margin"], float) for r in rows)  # a column of numbers: 0.0 without a strength

    args = trl_args(RewardConfig, tmp_path / "rm", max_steps=2, per_device_train_batch_size=8,
                    learning_rate=1e-3)
    trainer = RewardTrainer(model=str(reward_model), train_dataset=load_json_dataset(data, tmp_path / "hf"),
                            args=args)
    trainer.train()
    assert all(math.isfinite(x) for x in losses(trainer))


# ----------------------------------------------------------------------------- reward model in GRPO


def test_reward_model_is_a_trl_grpo_reward_function(world, sft_model, reward_model, tmp_path):
    """GRPOTrainer(reward_funcs=<our reward-model directory>) trains, and its rewards are our
    model's raw scores of ``prompt + completion`` tokenised as one string without special tokens.

    That is not what ``RewardScorer`` reports, for two documented reasons: (1) TRL's GRPO reward
    path frames the text differently: no BOS (``add_special_tokens=False``) and no EOS (the
    completion is decoded with ``skip_special_tokens=True``), so the score is read at the last
    completion token instead of the EOS our reward model was trained to score at (TRL's own
    RewardTrainer, by contrast, does add BOS and EOS); (2) TRL uses the raw logit and ignores the
    ``reward_offset``/``reward_scale`` that `rlhf reward` stores in config.json. Both are pinned
    exactly: given our framing as text ("<|bos|>" + prompt, completion + "<|eos|>"), TRL's reward
    path returns our raw score, and (that - offset) / scale is ``RewardScorer``'s reward. The gap is
    not small (one run: TRL's rewards of the 16 sampled completions were mostly 1.2 .. 1.95 where
    ``RewardScorer`` spread them over -0.9 .. 2.5; ``-s`` prints both)."""
    import datasets
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rlhfkit.scoring import RewardScorer, raw_rewards

    cfg = json.loads((reward_model / "config.json").read_text())
    offset, scale = cfg["reward_offset"], cfg["reward_scale"]
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and len(cfg["id2label"]) == 1
    assert offset != 0.0 and scale > 0

    prompts = [r["prompt"] for r in read_jsonl(world / "prompts.jsonl")[:16]]
    args = trl_args(GRPOConfig, tmp_path / "grpo", max_steps=2, per_device_train_batch_size=8,
                    num_generations=4, max_completion_length=24, learning_rate=1e-4)
    trainer = GRPOTrainer(model=str(sft_model), reward_funcs=str(reward_model), args=args,
                          train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]))
    tok = trainer.reward_processing_classes[0]
    rm = trainer.reward_funcs[0]
    # TRL keeps our PAD (!= EOS), so its last-non-pad pooling reads the last real token.
    assert tok.pad_token_id == rm.config.pad_token_id == cfg["pad_token_id"] != tok.eos_token_id

    captured = []  # (prompts, completions, rewards) of each generation batch, as TRL computed them
    calculate = trainer._calculate_rewards

    def spy(inputs, prompts, completions, completion_ids_list):
        r = calculate(inputs, prompts, completions, completion_ids_list)
        captured.append((list(prompts), list(completions), r[:, 0].tolist()))
        return r

    trainer._calculate_rewards = spy
    trainer.train()

    log = [h for h in trainer.state.log_history if "reward" in h]
    assert trainer.state.global_step == 2 and len(log) == 2 == len(captured)
    name = reward_model.name  # TRL names a reward model after its directory
    for h, (_, _, r) in zip(log, captured):
        assert len(r) == 8 and all(math.isfinite(x) for x in r)
        assert h["reward"] == pytest.approx(float(np.mean(r)), rel=1e-5, abs=1e-6)
        assert h[f"rewards/{name}/mean"] == pytest.approx(h["reward"], rel=1e-6)
        assert math.isfinite(h["loss"])
    P = [p for ps, _, _ in captured for p in ps]
    C = [c for _, cs, _ in captured for c in cs]
    trl_r = np.array([x for _, _, r in captured for x in r])
    assert np.std(trl_r) > 1e-3  # not a constant reward

    # (1) exactly our model's raw score of TRL's token sequence ...
    scorer = RewardScorer(reward_model, max_length=1024)
    plain_tok = AutoTokenizer.from_pretrained(reward_model)
    ours = []
    for p, c in zip(P, C):
        ids = torch.tensor([plain_tok(p + c, add_special_tokens=False)["input_ids"]])
        ones = torch.ones_like(ids)
        ours.append(raw_rewards(scorer.models[0], {"input_ids": ids, "attention_mask": ones,
                                                  "position_ids": torch.arange(ids.shape[1])[None]}).item())
    np.testing.assert_allclose(trl_r, ours, rtol=1e-4, atol=1e-5)
    # ... which is not RewardScorer's reward (framing and normalisation differ).
    scored, _ = scorer.score(P, C)
    print(f"GRPO rewards, TRL: {np.round(trl_r, 3)}\nRewardScorer:      {np.round(scored, 3)}")
    assert np.abs(trl_r - scored).max() > 1e-2

    # (2) Our framing, written as text, through TRL's own reward path: our raw score; normalised, our reward.
    fixed = read_jsonl(world / "sft_eval.jsonl")[:6]
    fp, fc = [r["prompt"] for r in fixed], [r["completion"] for r in fixed]
    bp, ce = [tok.bos_token + p for p in fp], [c + tok.eos_token for c in fc]
    ce_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in ce]
    trl_fixed = calculate([{"prompt": p} for p in bp], bp, ce, ce_ids)[:, 0].numpy()
    raw, _ = scorer.score(fp, fc, normalized=False)
    np.testing.assert_allclose(trl_fixed, raw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose((trl_fixed - offset) / scale, scorer.score(fp, fc)[0], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- SFT model


def test_sft_model_loads_in_trl_sft_trainer_with_plain_transformers_logits(world, sft_model, tmp_path):
    """SFTTrainer(model=<our SFT directory>) loads the same network as ``transformers`` alone
    (identical logits), keeps our PAD != EOS, tokenises our SFT data exactly as `rlhf sft` does
    (BOS + prompt, completion + EOS, loss on the completion only), and trains."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from rlhfkit.data.collate import tokenize_sft

    rows = read_jsonl(world / "sft.jsonl")[:32]
    args = trl_args(SFTConfig, tmp_path / "sft", max_steps=2, per_device_train_batch_size=8,
                    learning_rate=1e-4)
    trainer = SFTTrainer(model=str(sft_model), train_dataset=datasets.Dataset.from_list(rows), args=args)
    tok = AutoTokenizer.from_pretrained(sft_model)
    assert trainer.processing_class.pad_token_id == tok.pad_token_id != tok.eos_token_id
    assert trainer.model.config.pad_token_id == tok.pad_token_id

    plain = AutoModelForCausalLM.from_pretrained(sft_model).eval()
    texts = [r["prompt"] + r["completion"] for r in rows[:8]]
    batch = tok(texts, return_tensors="pt", padding=True)
    trainer.model.eval()
    with torch.no_grad():
        trl_logits = trainer.model(**batch).logits
        plain_logits = plain(**batch).logits
    assert trl_logits.dtype == plain_logits.dtype == torch.float32
    assert torch.equal(trl_logits, plain_logits)

    ours, dropped = tokenize_sft(rows, tok, max_length=1024)
    assert dropped == 0
    assert list(trainer.train_dataset["input_ids"]) == list(ours["input_ids"])
    # TRL folds the completion mask into labels (-100 = no loss).
    labels = [[t if m else -100 for t, m in zip(ids, mask)]
              for ids, mask in zip(ours["input_ids"], ours["completion_mask"])]
    assert list(trainer.train_dataset["labels"]) == labels

    trainer.model.train()
    trainer.train()
    assert trainer.state.global_step == 2
    ls = losses(trainer)
    assert len(ls) == 2 and all(math.isfinite(x) for x in ls)
    after = trainer.model.state_dict()
    assert any(not torch.equal(v, after[k].cpu()) for k, v in plain.state_dict().items())
