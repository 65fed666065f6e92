"""Build the synthetic world's artefacts on disk (`rlhf synth`): the offline default for the
demo, the tests and the benchmarks. Nothing is downloaded.

Layout of ``output_dir``::

    corpus.jsonl            pre-training documents {"text"} from the review grammar
    tokenizer/              byte-level BPE tokenizer trained with `tokenizers`, saved as a HF fast
                            tokenizer with distinct <|pad|>, <|bos|>, <|eos|> and a chat template
    base/                   tiny Llama-style causal LM pre-trained on the corpus (HF directory)
    pretrain/               the pre-training run directory (an `rlhf sft` run on `text` rows)
    sft.jsonl, sft_eval.jsonl          prompt/completion demonstrations
    prompts.jsonl, prompts_eval.jsonl  review openings {"prompt"} for RL / evaluation
    world.json              manifest: the config it was built with and the artefact paths

Everything is a deterministic function of the config (seeded). A directory whose world.json
records the same config is reused as is, so tests and later stages share one build.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
import yaml

from rlhfkit.config import GoldScoreConfig, SFTConfig, SynthConfig, save_config
from rlhfkit.data.loading import write_jsonl
from rlhfkit.errors import DataError
from rlhfkit.synthetic import grammar
from rlhfkit.synthetic.gold import gold_rewards

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
# A minimal chat template so conversational data works with the synthetic tokenizer too.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    """Byte-level BPE (any UTF-8 text is encodable) with BOS prepended by the post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    tk.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                      special_tokens=[(BOS, tk.token_to_id(BOS))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=PAD, bos_token=BOS, eos_token=EOS)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    return tok


def init_model(tok, cfg: SynthConfig, out_dir: Path) -> None:
    """A randomly initialised tiny Llama: RMSNorm, rotary positions, SwiGLU, tied embeddings."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    mcfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size,
        intermediate_size=(cfg.hidden_size * 8 // 3 + 63) // 64 * 64,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=512, tie_word_embeddings=True, attention_dropout=0.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(mcfg)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def build(cfg: SynthConfig) -> Path:
    """Build (or reuse) the world in ``cfg.output_dir``; returns that directory."""
    out = Path(cfg.output_dir)
    manifest = out / "world.json"
    key = cfg.model_dump(mode="json", exclude={"output_dir"})
    if manifest.is_file() and json.loads(manifest.read_text())["config"] == key and (out / "base").is_dir():
        log.info("reusing synthetic world in %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    s = cfg.seed
    log.info("synthetic world: generating corpus, prompts and demonstrations")
    docs = grammar.generate_corpus(cfg.n_docs, s)
    write_jsonl(out / "corpus.jsonl", [{"text": d} for d in docs])
    # Prompt and SFT sets use seeds offset from the corpus seed so the sets are disjoint draws.
    sft = grammar.make_sft_pairs(cfg.n_sft, s + 1)
    n_sft_eval = max(1, cfg.n_sft // 10)
    write_jsonl(out / "sft.jsonl", sft[n_sft_eval:])
    write_jsonl(out / "sft_eval.jsonl", sft[:n_sft_eval])
    prompts = [{"prompt": p} for p in grammar.make_prompts(cfg.n_prompts, s + 2)]
    n_eval = max(1, cfg.n_prompts // 10)
    write_jsonl(out / "prompts.jsonl", prompts[n_eval:])
    write_jsonl(out / "prompts_eval.jsonl", prompts[:n_eval])

    log.info("synthetic world: training a %d-token byte-level BPE tokenizer", cfg.vocab_size)
    texts = docs + [p["prompt"] for p in prompts] + [r["prompt"] + r["completion"] for r in sft]
    tok = train_tokenizer(texts, cfg.vocab_size, out / "tokenizer")
    init_model(tok, cfg, out / "init")

    log.info("synthetic world: pre-training the base model (%d steps)", cfg.pretrain_steps)
    from rlhfkit.train.sft import train as sft_train

    pre = SFTConfig(
        model=str(out / "init"), data=str(out / "corpus.jsonl"), output_dir=str(out / "pretrain"),
        completion_only_loss=False, packing=True, max_length=cfg.pretrain_seq_len,
        per_device_batch_size=cfg.pretrain_batch_size, max_steps=cfg.pretrain_steps,
        learning_rate=cfg.pretrain_lr, warmup_ratio=0.05, lr_scheduler="cosine", weight_decay=0.01,
        adam_betas=(0.9, 0.98), eval_fraction=0.02, log_every=25, seed=s, save_every=100,
    )
    # An interrupted build resumes its pre-training, but only a run of this very config.
    pre_dir = Path(pre.output_dir)
    previous = pre_dir / "config.yaml"
    same = lambda d: {k: v for k, v in d.items() if k != "resume"}  # noqa: E731
    if previous.is_file() and same(yaml.safe_load(previous.read_text())) == same(pre.model_dump(mode="json")):
        pre.resume = True
    elif pre_dir.exists():
        shutil.rmtree(pre_dir)
    final = sft_train(pre)
    if (out / "base").exists():
        shutil.rmtree(out / "base")
    shutil.copytree(final, out / "base")
    shutil.rmtree(out / "init")
    # a finished pre-training needs no resume state
    shutil.rmtree(out / "pretrain" / "checkpoints", ignore_errors=True)
    files = {k: str(out / v) for k, v in {
        "tokenizer": "tokenizer", "base_model": "base", "corpus": "corpus.jsonl", "sft": "sft.jsonl",
        "sft_eval": "sft_eval.jsonl", "prompts": "prompts.jsonl",
        "prompts_eval": "prompts_eval.jsonl"}.items()}
    manifest.write_text(json.dumps({"config": key, "files": files}, indent=2))
    return out


def gold_score_file(cfg: GoldScoreConfig) -> Path:
    """`rlhf gold-score`: add a gold-reward column to every row of a completions file."""
    from rlhfkit.data.loading import read_records

    rows = read_records(cfg.input)
    for i, r in enumerate(rows):
        v = r.get(cfg.completion_field)
        if not isinstance(v, str):  # name the source line, not the position (JSONL may have blank lines)
            row = rows.row_numbers[i] if rows.row_numbers else i + 1
            raise DataError("missing" if v is None else f"expected a string, got {type(v).__name__}",
                            source=cfg.input, row=row, field=cfg.completion_field)
    prompts = [r.get("prompt") if isinstance(r.get("prompt"), str) else None for r in rows]
    scores = gold_rewards([r[cfg.completion_field] for r in rows], prompts if all(prompts) else None)
    out = write_jsonl(cfg.output, [{**r, cfg.score_field: s} for r, s in zip(rows, scores)])
    log.info("gold-scored %d rows: mean %.4f -> %s", len(rows), sum(scores) / max(len(scores), 1), out)
    return out
