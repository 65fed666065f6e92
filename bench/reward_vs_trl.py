"""Reward-model training throughput: rlhfkit ``rlhf reward`` vs TRL's ``RewardTrainer`` (pairs/s; not a test).

    python bench/reward_vs_trl.py [--output runs/bench] [--steps 20] [--rounds 3] [--batch 8]
        [--models tiny,20m] [--threads 1] [--padding-free]

Identical work on both sides: the same causal-LM directory turned into a 1-output sequence
classifier (the quick world's SFT policy, and a random ~20M-param Llama with the world's
tokenizer), the same ``steps x batch`` preference pairs (bench/_common.make_pairs: chosen = the
SFT row's completion, rejected = another row's) trained once each, Bradley-Terry loss with no
margin and no reward centering, max length 128 (no pair is cut), AdamW lr 1e-5 linear, no warmup,
grad clip 1.0, fp32 on CPU, same threads, no gradient checkpointing (TRL's default is on: turned
off), no evaluation, no saving, no logging backend; rlhfkit's post-training reward normalisation
pass is off (``normalize=none``; it runs after the loop anyway), no padding-free batching unless
``--padding-free`` (then rlhfkit's ``padding_free``: each micro-batch's 2B sequences bin-packed into
rows as wide as the longest; TRL 1.16's ``RewardTrainer`` has no padding-free mode, so its side
stays padded). pairs/s = pairs / loop seconds;
MFU = 6 x N x (tokens of chosen + rejected sequences)/s / measured matmul peak.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

LR, SEED, MAX_LEN = 1e-5, 0, 128


def run_ours(a: argparse.Namespace, tmp: Path) -> dict:
    import rlhfkit.train.reward as stage
    from rlhfkit.config import RewardConfig

    timer = C.LoopTimer(stage)
    cfg = RewardConfig(model=a.model_dir, data=a.data, eval_fraction=0.0, output_dir=str(tmp / "ours"),
                       max_length=MAX_LEN, per_device_batch_size=a.batch, max_steps=a.steps, learning_rate=LR,
                       warmup_ratio=0.0, lr_scheduler="linear", max_grad_norm=1.0, normalize="none",
                       data_format="pairs", padding_free=a.padding_free, eval_every=0, save_every=0,
                       log_every=1, seed=SEED, mixed_precision=C.mixed_precision(a))
    stage.train(cfg)
    return {"loop_s": timer.seconds}


def run_trl(a: argparse.Namespace, tmp: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(a.model_dir)
    ds = Dataset.from_list(C.read_rows(a.data))
    args = RewardConfig(**C.trl_args(a, tmp, LR, SEED), per_device_train_batch_size=a.batch,
                        max_length=MAX_LEN, center_rewards_coefficient=None, disable_dropout=True,
                        weight_decay=0.0, eval_strategy="no")
    trainer = RewardTrainer(model=a.model_dir, args=args, train_dataset=ds, processing_class=tok)
    out = trainer.train()
    return {"loop_s": out.metrics["train_runtime"]}


def pair_lengths(model_dir: Path, data: Path) -> list[list[int]]:
    """[chosen, rejected] sequence lengths of each pair (the prompt counted in both)."""
    from rlhfkit.data.collate import tokenize_pairs
    from rlhfkit.modeling import load_tokenizer

    ds, _ = tokenize_pairs(C.read_rows(data), load_tokenizer(str(model_dir)), max_length=MAX_LEN)
    return [[len(p) + len(c), len(p) + len(r)]
            for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])]


def pair_bench(script: str, name: str, run_ours, run_trl, *, sides: list[str], pairs: list[tuple[str, str]],
               flops_per_token: int, seq_cls: bool, setting: dict, trl_padding_free: str) -> None:
    """The whole preference-pair benchmark (reward here, DPO in dpo_vs_trl.py): arguments, the
    child side, and in the parent per model the same ``steps x batch`` pairs for every side, A/B
    runs, ratios and MFU (``flops_per_token`` x N x tokens per run, N from ``matmul_params``)."""
    ap = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.splitlines()[0])
    C.common_args(ap, steps=20)
    ap.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    C.padding_free_arg(ap, trl_padding_free)
    a = ap.parse_args()
    if a.worker:
        return C.serve_worker(a, run_ours, run_trl, "pairs_per_s", a.steps * a.batch)

    out, world, dirs, peak = C.parent_setup(a)
    results = {}
    for model, mdir in dirs.items():
        steps = C.model_steps(a, model)
        n_pairs = steps * a.batch
        data = C.subset(C.make_pairs(world, out), n_pairs, out / f"pairs_{n_pairs}.jsonl")
        lengths = pair_lengths(mdir, data)
        tokens = sum(map(sum, lengths))
        args = ["--model-dir", str(mdir), "--data", str(data), "--steps", str(steps), "--batch", str(a.batch),
                *C.padding_free_args(a)]
        runs = C.ab_runs(script, args, sides, a.rounds, a.threads, "pairs_per_s", f"{name} {model}",
                         precision=a.precision)
        n = C.matmul_params(mdir, seq_cls=seq_cls)
        fpp = flops_per_token * n * tokens / n_pairs  # training FLOPs per pair
        results[model] = {"model_dir": str(mdir), "steps": steps, "matmul_params": n,
                          "tokens_per_run": tokens, **C.pad_shares(lengths, a.batch, steps, SEED),
                          **C.summarise(runs, "pairs_per_s", pairs, dict.fromkeys(sides, fpp))}
    setting = {"batch": a.batch, "max_length": MAX_LEN, "unit": "pairs/s", "padding_free": a.padding_free,
               **setting}
    C.finish(out, C.bench_name(name, a), a, results, setting, peak)


def main() -> None:
    # Bradley-Terry training: forward + backward of the scorer, 6N per token.
    pair_bench(__file__, "reward", run_ours, run_trl, sides=["ours", "trl"], pairs=[("ours", "trl")],
               flops_per_token=6, seq_cls=True, setting={},
               trl_padding_free="padded (RewardTrainer has none)")


if __name__ == "__main__":
    main()
