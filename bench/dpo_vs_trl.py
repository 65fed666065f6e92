"""DPO training throughput: rlhfkit ``rlhf dpo`` vs TRL's ``DPOTrainer`` (pairs/s; not a test).

    python bench/dpo_vs_trl.py [--output runs/bench] [--steps 20] [--rounds 3] [--batch 8]
        [--models tiny,20m] [--threads 1] [--padding-free]

Three sides, alternated in fresh processes: ``ours`` (frozen reference scored live every step,
like TRL), ``ours_pre`` (``precompute_ref_logprobs``: one reference pass over the pairs before
training; that pass -- fingerprinting included -- is timed and added to the loop time, so the
figure is the whole job's reference + training work) and ``trl`` (TRL's default live reference;
``precompute_ref_log_probs=False``).

Identical work: the same model directory (quick-world SFT policy; random ~20M-param Llama with
the world's tokenizer) as policy and reference, the same ``steps x batch`` preference pairs
trained once each, sigmoid loss with beta 0.1, no label smoothing, max length 128 (nothing cut),
AdamW lr 1e-5 linear, no warmup, grad clip 1.0, fp32 on CPU, same threads, no
gradient checkpointing (TRL's default is on: turned off), no evaluation and no sampled-KL
evaluation, no saving, no logging backend. MFU counts the policy's forward + backward (6N per
token) and the reference forward (2N per token): 8 x N x tokens.

Padded batches on both sides by default. ``--padding-free``: rlhfkit's ``padding_free`` on both
``ours`` sides (the precompute pass included); TRL 1.16's ``DPOTrainer`` switches its own
``padding_free`` off ("temporarily unavailable after a refactor"), so its side stays padded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

LR, BETA, SEED, MAX_LEN = 1e-5, 0.1, 0, 128


def run_ours(a: argparse.Namespace, tmp: Path) -> dict:
    import rlhfkit.train.dpo as stage
    from rlhfkit.config import DPOConfig

    timer = C.LoopTimer(stage)
    ref_pass = C.timed(stage, "_reference_cache")
    cfg = DPOConfig(model=a.model_dir, data=a.data, eval_fraction=0.0, output_dir=str(tmp / "ours"),
                    max_length=MAX_LEN, per_device_batch_size=a.batch, max_steps=a.steps, learning_rate=LR,
                    warmup_ratio=0.0, lr_scheduler="linear", max_grad_norm=1.0, loss_type="sigmoid",
                    beta=BETA, precompute_ref_logprobs=a.worker == "ours_pre", padding_free=a.padding_free,
                    eval_sample_prompts=0, eval_every=0, save_every=0, log_every=1, seed=SEED,
                    mixed_precision=C.mixed_precision(a))
    stage.train(cfg)
    return {"loop_s": timer.seconds + sum(ref_pass), "ref_pass_s": sum(ref_pass)}


def run_trl(a: argparse.Namespace, tmp: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(a.model_dir)
    ds = Dataset.from_list(C.read_rows(a.data))
    args = DPOConfig(**C.trl_args(a, tmp, LR, SEED), per_device_train_batch_size=a.batch, max_length=MAX_LEN,
                     padding_free=False, precompute_ref_log_probs=False, loss_type=["sigmoid"], beta=BETA,
                     label_smoothing=0.0, disable_dropout=True, weight_decay=0.0, eval_strategy="no")
    trainer = DPOTrainer(model=a.model_dir, args=args, train_dataset=ds, processing_class=tok)
    out = trainer.train()
    return {"loop_s": out.metrics["train_runtime"]}


def main() -> None:
    from reward_vs_trl import pair_bench

    # Policy forward + backward (6N per token) and the reference forward (2N per token).
    pair_bench(__file__, "dpo", run_ours, run_trl, sides=["ours", "ours_pre", "trl"],
               pairs=[("ours", "trl"), ("ours_pre", "trl")], flops_per_token=8, seq_cls=False,
               setting={"beta": BETA, "timer": "training loop only (+ the precompute pass for ours_pre)"},
               trl_padding_free="padded (DPOTrainer 1.16 disables its padding_free)")


if __name__ == "__main__":
    main()
