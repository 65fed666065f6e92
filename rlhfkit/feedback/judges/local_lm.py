"""A local Hugging Face causal LM prompted as a pairwise judge.

The judge's chat (:func:`~rlhfkit.feedback.judges.base.judge_messages`) is rendered with the
tokenizer's chat template and its generation prompt when it has one (else the plain text, with the
tokenizer's own special tokens), run once, and the preference is read from the next-token logits of
the two answer labels:

    P(A) = exp(l_A) / (exp(l_A) + exp(l_B))

(the softmax restricted to the two labels, so probability the model puts on other tokens does not
count for either side). Nothing is generated or parsed: a judge that would have answered "Sure! A"
still gets its preference from where its mass on "A" vs "B" is. Each label must be exactly one token
of this tokenizer, else the run stops naming `judge.labels` (give " A" with a leading space when the
template's last word is followed by a space-prefixed answer).
"""

from __future__ import annotations

import torch

from rlhfkit.feedback.judges.base import Answer, JudgeError, Query, judge_messages


def label_token_ids(tokenizer, labels: list[str]) -> list[int]:
    """The one token id of each label; a label of several tokens (or none) is a JudgeError."""
    ids = []
    for label in labels:
        toks = tokenizer.encode(label, add_special_tokens=False)
        if len(toks) != 1:
            raise JudgeError(f"judge.labels: {label!r} is {len(toks)} tokens {toks} for this tokenizer; each "
                             "label must be a single token (try another spelling, or a leading space)")
        ids.append(toks[0])
    if ids[0] == ids[1]:
        raise JudgeError(f"judge.labels: {labels} are the same token {ids[0]} for this tokenizer")
    return ids


def render_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the judge's prompt: the chat template's own (with the generation prompt), or the
    plain text encoded with the tokenizer's special tokens when it has no template."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer(text)["input_ids"])


@torch.no_grad()
def label_probabilities(model, sequences: list[list[int]], label_ids: list[int], pad_id: int,
                        device) -> list[float]:
    """P(first label) for each sequence: softmax over the two label logits at the next position.
    Left-padded batch with explicit position ids, so padding changes nothing."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, T)
    for i, s in enumerate(sequences):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                   position_ids=positions.to(device), use_cache=False).logits[:, -1, :].float()
    # logits: (B, V), the next token after each prompt (left padding puts every prompt's end last)
    pair = logits[:, label_ids]  # (B, 2)
    return torch.softmax(pair, dim=-1)[:, 0].cpu().tolist()


class LocalLMJudge:
    pointwise = False

    def __init__(self, spec):
        from rlhfkit.modeling import load_causal_lm, load_tokenizer

        self.spec = spec
        self.tokenizer = load_tokenizer(spec.model, padding_side="left")
        self.label_ids = label_token_ids(self.tokenizer, spec.labels)  # before the model: fail fast
        self.model = load_causal_lm(spec.model, self.tokenizer, dtype=spec.dtype).to(spec.device).eval()

    def ids_for(self, q: Query) -> list[int]:
        ids = render_ids(self.tokenizer, judge_messages(self.spec, q.prompt, q.texts[0], q.texts[1]))
        if len(ids) > self.spec.max_length:
            raise JudgeError(f"judge.max_length: the judge prompt for task {q.task_id} is {len(ids)} tokens, "
                             f"over {self.spec.max_length} (cutting it would hide part of a response)")
        return ids

    def ask(self, queries: list[Query], answer: Answer) -> None:
        size = self.spec.batch_size
        for start in range(0, len(queries), size):
            batch = queries[start:start + size]
            probs = label_probabilities(self.model, [self.ids_for(q) for q in batch], self.label_ids,
                                        self.tokenizer.pad_token_id, self.spec.device)
            for q, p in zip(batch, probs):
                answer(q, float(p), {"source": "logits"})
