"""Rollout generation speed on the synthetic world's tiny base model (not a test).

    python bench/rollout_speed.py [--world .rlhfkit-cache/test-world-*] [--prompts 64]
        [--samples 1] [--max-new-tokens 48] [--batch-size 64] [--threads 1 2] [--repeats 2]
        [--engines loop hf]

For each torch thread count and rollout engine, times ``generate_rollout`` on ``--prompts``
prompts x ``--samples`` samples each (``--samples 4``: a GRPO / RLOO group) and optionally the
same ``generate`` call without the KV cache. Reports sampled tokens/s (response tokens through
the first EOS), episodes/s, the share of rollout time spent recomputing log-probs, and the loop
engine's decode row-steps. Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import glob
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default=None, help="world directory (default: the test world cache)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=1, help="samples per prompt (a GRPO / RLOO group)")
    ap.add_argument("--engines", nargs="+", default=["loop", "hf"])
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per setting (best is kept)")
    ap.add_argument("--no-cache-baseline", action="store_true", help="also time generate(use_cache=False)")
    args = ap.parse_args()

    import torch

    from rlhfkit.data.collate import encode_prompts, left_pad_prompts
    from rlhfkit.modeling import load_causal_lm, load_tokenizer
    from rlhfkit.rl.engine import make_engine
    from rlhfkit.rl.rollout import generate_rollout

    world = args.world or min(glob.glob(".rlhfkit-cache/test-world-*[!k]"))
    tok = load_tokenizer(f"{world}/base")
    model = load_causal_lm(f"{world}/base", tok).eval()
    with open(f"{world}/prompts.jsonl") as f:
        rows = f.read().splitlines()
    prompts = [json.loads(r)["prompt"] for r in rows][: args.prompts]
    prompts += prompts * (args.prompts // max(len(prompts), 1))
    prompts = prompts[: args.prompts]

    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.engines:
            engine = make_engine(name)
            kw = dict(num_samples=args.samples, temperature=args.temperature, batch_size=args.batch_size,
                      engine=engine)
            generate_rollout(model, tok, prompts[:8], max_new_tokens=4, seed=0, **kw)  # warm-up
            best = None
            for rep in range(args.repeats):
                t0 = time.perf_counter()
                r = generate_rollout(model, tok, prompts, max_new_tokens=args.max_new_tokens, seed=rep, **kw)
                total = time.perf_counter() - t0
                if best is None or total < best[0]:
                    best = (total, r)
            total, r = best
            n_tok, episodes = r.meta["new_tokens"], len(prompts) * args.samples
            out = {"threads": threads, "engine": name, "episodes": episodes, "samples": args.samples,
                   "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                   "sampled_tokens": n_tok,
                   "gen_tokens_per_s": round(n_tok / r.meta["gen_seconds"], 1),
                   "rollout_tokens_per_s": round(n_tok / total, 1),
                   "episodes_per_s": round(episodes / total, 2),
                   "logprob_share": round(r.meta["logprob_seconds"] / total, 3),
                   "eos_rate": round(float(r.ended_with_eos.float().mean()), 3),
                   "row_steps": r.meta.get("row_steps")}
            print(json.dumps(out), flush=True)
        if args.no_cache_baseline:
            ids = encode_prompts(tok, prompts)
            t0 = time.perf_counter()
            with torch.no_grad():
                for s in range(0, len(ids), args.batch_size):
                    b = left_pad_prompts(ids[s:s + args.batch_size], tok.pad_token_id)
                    model.generate(**b, max_new_tokens=args.max_new_tokens, do_sample=True, top_k=0,
                                   temperature=args.temperature, pad_token_id=tok.pad_token_id,
                                   eos_token_id=tok.eos_token_id, use_cache=False)
            took = round(time.perf_counter() - t0, 3)
            print(json.dumps({"threads": threads, "no_cache_gen_seconds": took}),
                  flush=True)


if __name__ == "__main__":
    main()
