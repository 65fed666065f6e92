"""SFT stage: it learns (loss down, completion format up), and its mechanics are invariant:
gradient accumulation == bigger batch, 2 processes == 1, stop + resume == uninterrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import SFTConfig
from rlhfkit.train.common import read_metrics
from rlhfkit.train.sft import train


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def small_cfg(world: Path, out: Path, **kw) -> SFTConfig:
    base = dict(model=str(world / "base"), data=str(world / "sft.jsonl"),
                eval_data=str(world / "sft_eval.jsonl"), output_dir=str(out), learning_rate=1e-3,
                per_device_batch_size=8, max_steps=6, max_length=64, log_every=1, warmup_ratio=0.0,
                lr_scheduler="linear", seed=3)
    base.update(kw)
    return SFTConfig(**base)


@pytest.mark.slow
def test_sft_learns_the_completion_format(world, tmp_path):
    from rlhfkit.demo import sft_config
    from rlhfkit.testing.policy_check import evaluate_policy

    cfg = sft_config(world, tmp_path, quick=True)
    final = train(cfg)
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    # held-out loss falls by a clear margin
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 0.15, summary
    prompts = [json.loads(ln)["prompt"]
               for ln in (world / "prompts_eval.jsonl").read_text().splitlines()][:30]
    base = evaluate_policy(world / "base", prompts)
    sft = evaluate_policy(final, prompts)
    # The base model was pre-trained on long documents: it rarely stops after 1-2 sentences.
    assert sft["format_rate"] >= 0.6, sft
    assert sft["format_rate"] >= base["format_rate"] + 0.4, (base, sft)
    # metrics.jsonl has the step-0 eval and one line per step
    steps = [r["step"] for r in read_metrics(tmp_path / "sft")]
    assert steps[0] == 0 and steps[1:] == list(range(10, cfg.max_steps + 1, 10))


def test_grad_accumulation_equals_bigger_batch(world, tmp_path):
    # Completions differ in length, so a per-micro-batch mean would weight tokens differently.
    a = train(small_cfg(world, tmp_path / "a", per_device_batch_size=8, gradient_accumulation_steps=1))
    b = train(small_cfg(world, tmp_path / "b", per_device_batch_size=2, gradient_accumulation_steps=4))
    la = [r["loss"] for r in read_metrics(tmp_path / "a") if "loss" in r]
    lb = [r["loss"] for r in read_metrics(tmp_path / "b") if "loss" in r]
    assert la == pytest.approx(lb, rel=1e-5)
    wa, wb = weights(a), weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_stop_and_resume_equals_uninterrupted(world, tmp_path):
    full = train(small_cfg(world, tmp_path / "full"))
    cfg = small_cfg(world, tmp_path / "split", stop_after=2, save_every=1)
    train(cfg)
    assert not (tmp_path / "split" / "final").exists()
    cfg.stop_after = None
    cfg.resume = True
    resumed = train(cfg)
    wf, wr = weights(full), weights(resumed)
    for k in wf:
        assert torch.equal(wf[k], wr[k]), k  # bitwise on CPU
    steps = [r["step"] for r in read_metrics(tmp_path / "split")]
    assert steps == sorted(set(steps)) == list(range(0, 7)), steps  # no duplicated or missing step
    lf = [r["loss"] for r in read_metrics(tmp_path / "full") if "loss" in r]
    lr = [r["loss"] for r in read_metrics(tmp_path / "split") if "loss" in r]
    assert lf == lr


@pytest.mark.slow
def test_two_processes_equal_one(world, tmp_path):
    """2 gloo processes (MULTI_CPU, DDP) with batch b follow 1 process with batch 2b."""
    common = [f"model={world / 'base'}", f"data={world / 'sft.jsonl'}",
              f"eval_data={world / 'sft_eval.jsonl'}", "learning_rate=1e-3", "max_steps=4", "max_length=64",
              "log_every=1", "warmup_ratio=0.0", "seed=5"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    # On a CPU-only machine `accelerate launch --multi_gpu` starts the processes and rlhfkit's
    # Accelerator(cpu=True) joins them into a gloo group (`--cpu` would start a single process).
    accelerate = str(Path(sys.executable).parent / "accelerate")
    two = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                          "-m", "rlhfkit", "sft", *common, "per_device_batch_size=4",
                          f"output_dir={tmp_path / 'two'}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "rlhfkit", "sft", *common, "per_device_batch_size=8",
                          f"output_dir={tmp_path / 'one'}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["processes"] == 2 and s2["global_batch"] == 8
    l1 = [r["loss"] for r in read_metrics(tmp_path / "one") if "loss" in r]
    l2 = [r["loss"] for r in read_metrics(tmp_path / "two") if "loss" in r]
    assert len(l1) == 4 and l1 == pytest.approx(l2, rel=1e-4)
    w1, w2 = weights(tmp_path / "one" / "final"), weights(tmp_path / "two" / "final")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-3, atol=1e-5)


def test_saved_model_loads_with_plain_transformers(world, tmp_path):
    final = train(small_cfg(world, tmp_path / "run", max_steps=2))
    assert (final / "model.safetensors").is_file() and not list(final.glob("*.bin"))
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained({str(final)!r})\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(final)!r})\n"
        "assert tok.pad_token_id != tok.eos_token_id\n"
        "x = tok(['review of the film'], return_tensors='pt')\n"
        "out = m.generate(**x, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)\n"
        "assert out.shape[1] > x['input_ids'].shape[1]\n"
        "assert not any(k.startswith('rlhfkit') for k in sys.modules)\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_lora_sft_merges_into_a_plain_model(world, tmp_path):
    pytest.importorskip("peft")
    final = train(small_cfg(world, tmp_path / "lora", lora_r=4, lora_alpha=8, learning_rate=5e-3,
                            max_steps=3))
    w0, w1 = weights(world / "base"), weights(final)
    assert set(w0) == set(w1)  # merged: no lora_A/lora_B keys, loads as the base architecture
    changed = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert changed and all("proj" in k for k in changed)  # only adapted linear layers moved
    losses = [r["loss"] for r in read_metrics(tmp_path / "lora") if "loss" in r]
    assert losses[-1] < losses[0]


def test_packing_trains_and_masks(world, tmp_path):
    final = train(small_cfg(world, tmp_path / "packed", packing=True, completion_only_loss=False,
                            max_steps=3))
    summary = json.loads((tmp_path / "packed" / "summary.json").read_text())
    assert final.is_dir() and summary["final_eval_loss"] < summary["initial_eval_loss"]


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(world, tmp_path, monkeypatch):
    import rlhfkit.train.sft as sft
    from rlhfkit.errors import TrainingError

    real, calls = sft.token_nll, {"n": 0}

    def poisoned(logits, labels):  # training calls: one per micro-batch; step 4 gets a NaN loss
        nll, n = real(logits, labels)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 4:
                return nll * float("nan"), n
        return nll, n

    monkeypatch.setattr(sft, "token_nll", poisoned)
    cfg = small_cfg(world, tmp_path / "nan", save_every=2)
    with pytest.raises(TrainingError) as e:
        train(cfg)
    msg = str(e.value)
    assert "step 4" in msg and "non-finite" in msg and "step-00000002" in msg
    ckpt = tmp_path / "nan" / "checkpoints"
    assert (ckpt / "latest").read_text() == "step-00000002"
    good = load_file(str(ckpt / "step-00000002" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in good.values())
    # skip mode: the poisoned update is skipped, the run finishes with finite weights
    calls["n"] = 0
    final = train(small_cfg(world, tmp_path / "skip", on_nonfinite="skip"))
    assert all(torch.isfinite(v).all() for v in weights(final).values())
    assert [r.get("grad_norm") for r in read_metrics(tmp_path / "skip") if r["step"] == 4] == [None]
