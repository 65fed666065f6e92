"""A zoo of tiny stand-ins for the models users bring, built offline in seconds.

The synthetic world has one architecture and one tokenizer of our own; the bugs that matter on
real checkpoints live in what differs between families: how a chat template writes BOS and ends a
turn, whether the tokenizer adds its own BOS, which dropout attributes a module keeps, what a
shipped ``generation_config.json`` switches on. This module builds, from ``transformers`` configs
and a ``tokenizers`` BPE trained on a few sentences:

- ``ARCHITECTURES``: random-weight causal LMs of eight families (Llama, Qwen2, Mistral, Gemma,
  GPT-2, OPT, Phi-3, GPT-NeoX) with dropout switched *on* in every place the family has one
  (GPT-2 and OPT ship 0.1; the others are set to 0.1 so that a missed attribute shows) and a
  hostile ``generation_config.json`` (repetition penalty, n-gram blocking, a minimum length, bad
  words, suppressed tokens, two EOS ids, greedy by default);
- ``TEMPLATES``: tokenizers carrying each family's chat-template conventions -- ChatML (Qwen, no
  BOS), Llama-3 headers (BOS in the template *and* added by the tokenizer), Mistral ``[INST]``
  (the same, Llama-2 style), Gemma turns (BOS in the template), Phi-3 tags (no BOS in the
  template although the tokenizer adds one) -- each with EOS = its end-of-turn token, and no pad
  token where the family has none (Llama-3, Mistral: ``load_tokenizer`` must add one and the
  embeddings must grow).

Every tokenizer shares one base vocabulary and the same special tokens, so any architecture pairs
with any template: the conformance matrix is their product (tests/test_conformance.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CONTEXT = 64  # max_position_embeddings of every zoo model: long prompts are easy to make

# Special tokens of every family; all are in every zoo tokenizer (same ids everywhere), so a
# model's vocabulary fits all templates. "<|pad|>" is deliberately absent: families without a
# pad token get it from `load_tokenizer`, which grows the embeddings.
SPECIALS = ["<|endoftext|>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<bos>", "<eos>", "<pad>",
            "<start_of_turn>", "<end_of_turn>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

_CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
           "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
           "{% endif %}")
_LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
           "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
           "{% endif %}")
_MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
            "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
            "{{ message['content'] + eos_token }}{% endif %}{% endfor %}")
_GEMMA = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}"
          "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
          "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
_PHI3 = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + "
         "'<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")

# name -> (chat template, bos, eos (= end of turn), pad or None, tokenizer adds BOS itself)
TEMPLATES: dict[str, tuple[str, str | None, str, str | None, bool]] = {
    "chatml": (_CHATML, None, "<|im_end|>", "<|endoftext|>", False),
    "llama3": (_LLAMA3, "<|begin_of_text|>", "<|eot_id|>", None, True),
    "mistral": (_MISTRAL, "<s>", "</s>", None, True),
    "gemma": (_GEMMA, "<bos>", "<end_of_turn>", "<pad>", True),
    "phi3": (_PHI3, "<s>", "<|end|>", "<|endoftext|>", True),
}

_CORPUS = [
    "hello there, how are you today?", "i am fine, thank you very much.", "what is the capital of france?",
    "the capital of france is paris.", "write a short poem about the sea.",
    "the sea is wide and blue and deep.",
    "explain recursion in one sentence.", "a function that calls itself on a smaller problem.",
    "def add(a, b): return a + b", "list three colours: red, green, blue.", "1 2 3 4 5 6 7 8 9 10",
    "User: tell me a joke. Assistant: why did the chicken cross the road?",
]

# Conversations every cell renders: single turn, multi-turn, and one with a system message
# (Mistral's template drops it, as Mistral's own does not accept one). All fit the 64-token context.
CONVERSATIONS = [
    [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi, how are you?"}],
    [{"role": "user", "content": "the capital of france?"},
     {"role": "assistant", "content": "paris."},
     {"role": "user", "content": "and of italy?"},
     {"role": "assistant", "content": "rome."}],
    [{"role": "system", "content": "be brief."}, {"role": "user", "content": "list three colours"},
     {"role": "assistant", "content": "red, green, blue"}],
]


def _base_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=380, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_CORPUS * 4, trainer)
    return tk


def build_tokenizer(template: str, out_dir: str | Path) -> Path:
    """Save a Hugging Face fast tokenizer with ``template``'s conventions to ``out_dir``."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    chat, bos, eos, pad, adds_bos = TEMPLATES[template]
    tk = _base_tokenizer()
    if adds_bos:  # Llama-style tokenizers prepend BOS to every encoded text
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tk.token_to_id(bos))])
    kw = {"bos_token": bos} if bos else {}
    if pad:
        kw["pad_token"] = pad
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, **kw)
    tok.chat_template = chat
    out = Path(out_dir)
    tok.save_pretrained(out)
    return out


def _configs(vocab: int) -> dict:
    from transformers import (GemmaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, OPTConfig,
                              Phi3Config, Qwen2Config)

    ids = {"vocab_size": vocab, "pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2}
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "max_position_embeddings": CONTEXT, **ids}
    return {
        "llama": LlamaConfig(**small, num_key_value_heads=2, attention_dropout=0.1),
        "qwen2": Qwen2Config(**small, num_key_value_heads=2, attention_dropout=0.1),
        "mistral": MistralConfig(**small, num_key_value_heads=2, attention_dropout=0.1, sliding_window=None),
        "gemma": GemmaConfig(**small, num_key_value_heads=1, head_dim=8, attention_dropout=0.1),
        "gpt2": GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=CONTEXT, resid_pdrop=0.1,
                           embd_pdrop=0.1, attn_pdrop=0.1, **ids),
        "opt": OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                         word_embed_proj_dim=32, max_position_embeddings=CONTEXT, dropout=0.1,
                         attention_dropout=0.1, **ids),
        "phi3": Phi3Config(**small, num_key_value_heads=4, original_max_position_embeddings=CONTEXT,
                           resid_pdrop=0.1, embd_pdrop=0.1, attention_dropout=0.1),
        "gpt_neox": GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4,
                                  max_position_embeddings=CONTEXT, hidden_dropout=0.1, attention_dropout=0.1,
                                  rotary_pct=0.5, **ids),
    }


ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma", "gpt2", "opt", "phi3", "gpt_neox")


def hostile_generation_config(vocab: int) -> dict:
    """What a checkpoint may ship in generation_config.json that changes the sampled distribution
    (Qwen2.5 ships repetition_penalty 1.05; Llama-3 two EOS ids; many set do_sample/temperature)."""
    return {"do_sample": False, "temperature": 0.3, "top_k": 3, "top_p": 0.5, "repetition_penalty": 1.3,
            "no_repeat_ngram_size": 2, "min_new_tokens": 4, "bad_words_ids": [[vocab - 1]],
            "suppress_tokens": [vocab - 2], "eos_token_id": [2, vocab - 3], "max_length": 20}


def build_model(arch: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Save a random tiny ``arch`` causal LM (safetensors) with dropout on and a hostile
    generation config to ``out_dir``; its vocabulary fits every template's tokenizer."""
    from transformers import AutoModelForCausalLM

    vocab = len(SPECIALS) + _base_vocab_size()
    config = _configs(vocab)[arch]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the default init: a peaked, not near-uniform, LM
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(json.dumps(hostile_generation_config(vocab), indent=1))
    return out


_BASE_VOCAB: list[int] = []


def _base_vocab_size() -> int:
    if not _BASE_VOCAB:
        _BASE_VOCAB.append(_base_tokenizer().get_vocab_size() - len(SPECIALS))
    return _BASE_VOCAB[0]


def template_ids(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> list[int]:
    """``apply_chat_template(..., tokenize=True)``'s ids -- the model's own -- with the white space
    a template writes after the final end-of-turn dropped (generation stops at EOS, so that is
    where every sequence we build ends)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    ids = list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
    eos = tokenizer.eos_token_id
    if not add_generation_prompt and eos in ids:
        last = len(ids) - 1 - ids[::-1].index(eos)
        if not tokenizer.decode(ids[last + 1:]).strip():
            ids = ids[:last + 1]
    return ids
