"""SFT training throughput: rlhfkit ``rlhf sft`` vs TRL's ``SFTTrainer`` (tokens/s; not a test).

    python bench/sft_vs_trl.py [--output runs/bench] [--steps 20] [--rounds 3] [--batch 16]
        [--models tiny,20m] [--threads 1] [--padding-free]

Identical work on both sides: the same model directory (the quick world's SFT policy, and a
randomly initialised ~20M-param Llama with the world's tokenizer), the same ``steps x batch``
prompt/completion rows of ``world/sft.jsonl`` trained exactly once each (one epoch; only the
batch order differs), completion-only loss, no packing, max length 128 (no row is cut), AdamW
lr 1e-4 linear, no warmup, grad clip 1.0, fp32 on CPU, the same torch thread count, no gradient
checkpointing (TRL defaults it on: turned off), no evaluation, no saving, no logging backend.
tokens/s = non-pad tokens of those rows / loop seconds; MFU = 6 x N x tokens/s / measured
matmul peak (see bench/_common.py).

Padded batches on both sides by default. ``--padding-free``: rlhfkit's ``padding_free`` (each
micro-batch bin-packed into rows as wide as its longest example, block-diagonal 4D mask) against
TRL's own ``padding_free=True``, which runs on CPU by concatenating the whole micro-batch into ONE
row without a mask, transformers deriving the per-example mask from the position ids (TRL then
needs ``max_length=None``: the same work, as nothing is cut at 128).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

LR, SEED, MAX_LEN = 1e-4, 0, 128


def run_ours(a: argparse.Namespace, tmp: Path) -> dict:
    import rlhfkit.train.sft as stage
    from rlhfkit.config import SFTConfig

    timer = C.LoopTimer(stage)
    cfg = SFTConfig(model=a.model_dir, data=a.data, eval_fraction=0.0, output_dir=str(tmp / "ours"),
                    max_length=MAX_LEN, per_device_batch_size=a.batch, max_steps=a.steps, learning_rate=LR,
                    warmup_ratio=0.0, lr_scheduler="linear", max_grad_norm=1.0, completion_only_loss=True,
                    packing=False, padding_free=a.padding_free, eval_every=0, save_every=0, log_every=1,
                    seed=SEED, mixed_precision=C.mixed_precision(a))
    stage.train(cfg)
    return {"loop_s": timer.seconds}


def run_trl(a: argparse.Namespace, tmp: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(a.model_dir)
    ds = Dataset.from_list(C.read_rows(a.data))
    # TRL refuses padding_free with a max_length it would not enforce; nothing is cut at MAX_LEN anyway.
    args = SFTConfig(**C.trl_args(a, tmp, LR, SEED), per_device_train_batch_size=a.batch,
                     max_length=None if a.padding_free else MAX_LEN, packing=False,
                     padding_free=a.padding_free, completion_only_loss=True, weight_decay=0.0,
                     eval_strategy="no")
    trainer = SFTTrainer(model=a.model_dir, args=args, train_dataset=ds, processing_class=tok)
    out = trainer.train()
    return {"loop_s": out.metrics["train_runtime"]}


def row_lengths(model_dir: Path, data: Path) -> list[int]:
    """Tokens of each row as rlhfkit tokenises it (prompt + completion + EOS)."""
    from rlhfkit.data.collate import tokenize_sft
    from rlhfkit.modeling import load_tokenizer

    ds, _ = tokenize_sft(C.read_rows(data), load_tokenizer(str(model_dir)), max_length=MAX_LEN)
    return [len(x) for x in ds["input_ids"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.common_args(ap, steps=20)
    ap.add_argument("--batch", type=int, default=16, help="sequences per optimizer step")
    ap.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    C.padding_free_arg(ap, "its own padding_free (one concatenated row per micro-batch)")
    a = ap.parse_args()
    if a.worker:
        return C.serve_worker(a, run_ours, run_trl, "tokens_per_s", a.tokens)

    out, world, dirs, peak = C.parent_setup(a)
    results = {}
    for name, mdir in dirs.items():
        steps = C.model_steps(a, name)
        data = C.subset(world / "sft.jsonl", steps * a.batch, out / f"sft_{steps * a.batch}.jsonl")
        lengths = row_lengths(mdir, data)
        tokens = sum(lengths)
        args = ["--model-dir", str(mdir), "--data", str(data), "--steps", str(steps), "--batch", str(a.batch),
                "--tokens", str(tokens), *C.padding_free_args(a)]
        runs = C.ab_runs(__file__, args, ["ours", "trl"], a.rounds, a.threads, "tokens_per_s", f"sft {name}",
                         precision=a.precision)
        n = C.matmul_params(mdir)
        results[name] = {"model_dir": str(mdir), "steps": steps, "matmul_params": n, "tokens_per_run": tokens,
                         **C.pad_shares([[x] for x in lengths], a.batch, steps, SEED),
                         **C.summarise(runs, "tokens_per_s", [("ours", "trl")],
                                       {"ours": 6 * n, "trl": 6 * n})}
    setting = {"batch": a.batch, "max_length": MAX_LEN, "unit": "tokens/s", "padding_free": a.padding_free}
    C.finish(out, C.bench_name("sft", a), a, results, setting, peak)


if __name__ == "__main__":
    main()
