"""Model and tokenizer I/O: the one place that loads and saves policies (and later reward,
value and reference models).

Rules enforced here so no stage has to remember them:
- PAD must be a real token distinct from EOS. If a tokenizer has no pad token (or pad == eos),
  a dedicated ``<|pad|>`` token is added and the embeddings are resized, with a warning. Padding
  with EOS silently breaks "read the score at the last real token" and teaches a policy that EOS
  is noise (RLHF-DETAILS items 2 and 10).
- Dropout is switched off in models used for RLHF/DPO (item 7): otherwise two forwards of the
  same input give different log-probs and the first PPO ratio is not 1. It is zeroed in the
  config *before* the model is built and then on every module, because architectures keep
  their own float copies (OPT's ``self.dropout``, Llama/Qwen2/Mistral attention's
  ``self.attention_dropout``) that a config change after construction never reaches.
- Final models are plain Hugging Face directories (safetensors) that load with `transformers`
  alone; LoRA adapters are merged before the final save.
- No pickle from outside is ever unpickled: weights are safetensors, and checkpoints are read
  with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from rlhfkit.errors import ModelError

log = logging.getLogger(__name__)

PAD_TOKEN = "<|pad|>"

def quiet_hf_progress() -> None:
    """Silence per-file download/load/save progress bars: our own progress bar is the one to read."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def load_tokenizer(name_or_path: str, *, padding_side: str = "right"):
    """Load a fast tokenizer and make sure it has a pad token that is not EOS."""
    from transformers import AutoTokenizer

    quiet_hf_progress()
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load tokenizer from '{name_or_path}': {e}") from None
    if tok.eos_token_id is None:
        raise ModelError(f"tokenizer '{name_or_path}' has no EOS token; RLHF needs one to end responses")
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        log.warning("tokenizer '%s' has %s; adding a dedicated %s token", name_or_path,
                    "no pad token" if tok.pad_token_id is None else "pad == eos", PAD_TOKEN)
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.padding_side = padding_side
    return tok


def load_causal_lm(name_or_path: str, tokenizer=None, *, dtype: str = "float32",
                   disable_dropout: bool = True):
    """Load an ``AutoModelForCausalLM``; resize its embeddings if the tokenizer grew a pad token."""
    from transformers import AutoModelForCausalLM

    try:
        config = _load_config(name_or_path, disable_dropout)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, config=config, dtype=torch_dtype(dtype))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load causal LM from '{name_or_path}': {e}") from None
    if tokenizer is not None:
        match_vocab(model, tokenizer)
    if disable_dropout:
        disable_dropout_in(model)
    return model


def match_vocab(model, tokenizer) -> None:
    """Grow the embedding matrix when the tokenizer has more tokens than the model, and tell the
    model's configs which ids are pad/eos/bos so that `generate` and saved configs agree."""
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        # New rows (the added PAD) are the mean of the old ones, not random draws: every load of
        # the same checkpoint must give the same model, or a policy and its reference (loaded
        # separately) differ from step 0 (a nonzero KL and first ratio on pad-less tokenizers).
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                          if m is not None}.values():
                layer.weight[old:] = layer.weight[:old].mean(0)
                if getattr(layer, "bias", None) is not None and layer.bias.shape[0] > old:
                    layer.bias[old:] = layer.bias[:old].mean()
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is None:
            continue
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        if tokenizer.bos_token_id is not None:
            cfg.bos_token_id = tokenizer.bos_token_id


REWARD_OFFSET, REWARD_SCALE = "reward_offset", "reward_scale"  # keys in a reward model's config.json


def load_reward_model(name_or_path: str, tokenizer=None, *, dtype: str = "float32",
                      disable_dropout: bool = True):
    """A scalar reward model: ``AutoModelForSequenceClassification`` with one output.

    From a causal LM directory (base or SFT) the trunk is reused and the new head is initialised
    small, std 1/sqrt(d_model + 1), bias 0 (RLHF-DETAILS item 3), so initial rewards are near 0
    and the first gradients are not dominated by a random head. A directory that already is a
    reward model is loaded as is. The score is read at the last non-pad token, which is why
    PAD != EOS is enforced by `load_tokenizer` (item 2).
    """
    from transformers import AutoModelForSequenceClassification

    try:
        config = _load_config(name_or_path, disable_dropout)
        is_rm = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, config=config,
                                                                   dtype=torch_dtype(dtype))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a reward model from '{name_or_path}': {e}") from None
    if tokenizer is not None:
        match_vocab(model, tokenizer)
    if not is_rm:
        head = reward_head(model)
        d = head.weight.shape[1]
        with torch.no_grad():
            head.weight.normal_(0.0, 1.0 / math.sqrt(d + 1))
            if head.bias is not None:
                head.bias.zero_()
    if disable_dropout:
        disable_dropout_in(model)
    return model


def reward_head(model) -> nn.Linear:
    """The (1, d_model) output layer of a sequence-classification model."""
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if not linears:
        raise ModelError(f"cannot find the scalar head of {type(model).__name__}")
    return linears[-1]


def _is_drop_key(name: str) -> bool:
    # dropout, attention_dropout, hidden_dropout, resid_pdrop, embd_pdrop, attn_pdrop, layerdrop,
    # classifier_dropout, summary_first_dropout, ...: every probability of dropping something.
    return "drop" in name.lower()


def zero_dropout_config(config) -> None:
    """Set every float dropout probability of a transformers config (and its sub-configs) to 0."""
    for key, value in list(vars(config).items()):
        if _is_drop_key(key) and isinstance(value, float) and not isinstance(value, bool):
            setattr(config, key, 0.0)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # nested text/vision config
            zero_dropout_config(value)


def _load_config(name_or_path: str, disable_dropout: bool):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path)
    if disable_dropout:
        zero_dropout_config(config)  # before instantiation: modules copy these floats in __init__
    return config


def disable_dropout_in(model: nn.Module) -> None:
    """Zero every dropout probability: the config, ``nn.Dropout`` modules, and the float copies
    that modules keep as attributes (``self.dropout``, ``self.attention_dropout``,
    ``self.layerdrop``, ...) and read in ``forward`` whatever the config says later."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        for key, value in list(vars(m).items()):
            if _is_drop_key(key) and isinstance(value, float):
                setattr(m, key, 0.0)
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            zero_dropout_config(cfg)


def apply_lora(model, *, r: int, alpha: float, dropout: float, target_modules):
    """Wrap ``model`` with LoRA adapters (peft is imported only here: it is optional).

    The task type follows the model: a ``...ForSequenceClassification`` reward model gets
    ``SEQ_CLS``, so peft trains its scalar head in full (``modules_to_save``) and the merged
    model saves it; ``CAUSAL_LM`` there crashes (no ``prepare_inputs_for_generation``) and would
    leave the fresh head untrained."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelError("lora_r > 0 needs the 'peft' package: pip install 'rlhfkit[lora]'") from None
    seq_cls = type(model).__name__.endswith("ForSequenceClassification")
    extra = {"modules_to_save": [_head_name(model)]} if seq_cls else {}
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                     task_type="SEQ_CLS" if seq_cls else "CAUSAL_LM", **extra)
    return get_peft_model(model, cfg)


def _head_name(model) -> str:
    head = reward_head(model)
    return next(name for name, m in model.named_modules() if m is head).split(".")[-1]


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def save_hf(model, tokenizer, out_dir: str | os.PathLike, *,
            extra_config: dict[str, Any] | None = None) -> Path:
    """Save a model as a plain Hugging Face directory (safetensors + tokenizer).

    LoRA models are merged into their base weights first so the directory loads with
    `transformers` alone. Written to a temporary sibling and renamed, so a crash mid-save never
    leaves a half-written model under the final name.
    """
    import shutil

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if is_peft(model):
        model = model.merge_and_unload()
    if extra_config:
        for k, v in extra_config.items():
            setattr(model.config, k, v)
    _make_generation_config_savable(model)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


_SAMPLE_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")


def _make_generation_config_savable(model) -> None:
    """Checkpoints often ship a generation config that transformers refuses to save (e.g.
    ``do_sample: false`` with a ``temperature``): the final save would then crash after the whole
    run. Unset the sampling-only flags that greedy decoding ignores anyway, with a warning."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return
    try:
        gc.validate(strict=True)
        return
    except ValueError as e:
        first = str(e).strip().splitlines()[1:2]
    if not gc.do_sample:
        dropped = {k: getattr(gc, k) for k in _SAMPLE_ONLY if getattr(gc, k, None) is not None}
        for k in dropped:
            setattr(gc, k, None)
        log.warning("the model's generation config is invalid (%s); saving it without the sampling-only "
                    "settings that greedy decoding ignores: %s", " ".join(first), dropped)
    try:
        gc.validate(strict=True)
    except ValueError as e:
        raise ModelError(f"the model's generation config cannot be saved: {e}") from None


def chat_renderer(tokenizer) -> Callable[[list[dict], bool], str] | None:
    """A ``(messages, add_generation_prompt) -> text`` function from the tokenizer's chat
    template, or None when the tokenizer has none (conversational data then errors clearly)."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    def render(messages: list[dict], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    return render
