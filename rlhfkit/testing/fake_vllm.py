"""A stand-in for the ``vllm`` module, following its documented offline API, for testing
:mod:`rlhfkit.rl.vllm_engine` where vLLM cannot be installed (the main test environment pins a
transformers that vLLM's CPU build does not accept).

What it reproduces: ``LLM(model=..., **engine_args)`` loads its own copy of the weights from the
directory; ``LLM.generate(prompts, sampling_params, use_tqdm)`` with ``{"prompt_token_ids": [...]}``
prompts returns one ``RequestOutput`` per prompt whose ``outputs`` hold ``n`` completions with
``token_ids`` (through the stop token) and, with ``logprobs=0``, one ``{token_id: Logprob}`` per
position with the processed (temperature-scaled) log-prob; ``collective_rpc("reload_weights",
kwargs={"weights_iterator": pairs, "is_checkpoint_format": True})`` copies Hugging Face-named
tensors into the engine's copy (an unknown name is an error, as in vLLM);
``reset_prefix_cache()``. Sampling uses its own seeded generator and a plain forward per token,
so it shares no code with the engines under test. Every ``LLM`` and ``SamplingParams`` made is
recorded in ``created`` for assertions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

created: dict[str, list] = {"llm": [], "params": []}


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int = 16
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    detokenize: bool = True
    logprobs: int | None = None
    seed: int | None = None

    def __post_init__(self):
        created["params"].append(self)


@dataclass
class Logprob:
    logprob: float


class LLM:
    def __init__(self, model: str, **engine_args):
        from transformers import AutoModelForCausalLM

        self.engine_args = {"model": model, **engine_args}
        net = AutoModelForCausalLM.from_pretrained(model).eval()
        self.model = net
        self.prefix_resets = 0
        self.reloads = 0
        created["llm"].append(self)

    def collective_rpc(self, method: str, args: tuple = (), kwargs: dict | None = None) -> list:
        if method != "reload_weights":
            raise NotImplementedError(f"fake vLLM: no worker method {method}")
        kwargs = kwargs or {}
        if not kwargs.get("is_checkpoint_format", True):
            raise NotImplementedError("fake vLLM: only checkpoint-format weights")
        params = dict(self.model.named_parameters(remove_duplicate=False))  # tied names too, as vLLM
        for name, tensor in kwargs["weights_iterator"]:
            if name not in params:
                raise KeyError(f"fake vLLM: no parameter named {name}")
            params[name].data.copy_(tensor)
        self.reloads += 1
        return [None]

    def reset_prefix_cache(self) -> bool:
        self.prefix_resets += 1
        return True

    @torch.no_grad()
    def generate(self, prompts: list[dict], sampling_params: SamplingParams, use_tqdm: bool = True):
        p = sampling_params
        gen = torch.Generator().manual_seed(p.seed if p.seed is not None else 0)
        outs = []
        for prompt in prompts:
            completions = []
            for _ in range(p.n):
                ids, lps = list(prompt["prompt_token_ids"]), []
                new: list[int] = []
                for _ in range(p.max_tokens):
                    logits = self.model(input_ids=torch.tensor([ids + new])).logits[0, -1].float()
                    logp = torch.log_softmax(logits / p.temperature, -1)
                    tok = int(torch.multinomial(logp.exp(), 1, generator=gen))
                    new.append(tok)
                    lps.append({tok: Logprob(float(logp[tok]))})
                    if tok in p.stop_token_ids and not p.ignore_eos:
                        break
                lps = lps if p.logprobs is not None else None
                completions.append(SimpleNamespace(token_ids=new, logprobs=lps))
            outs.append(SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"], outputs=completions))
        return outs
