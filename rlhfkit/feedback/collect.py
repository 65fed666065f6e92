"""`rlhf collect`: put candidate responses into a feedback project and make comparison tasks of them.

Two sources: sample ``num_samples`` responses per prompt from each of ``models`` (recording the
model id and the sampling settings with every response), or import a file of ready-made responses.
Then, per prompt, up to ``pairs_per_prompt`` tasks of ``task_size`` responses with distinct texts
are drawn without replacement, preferring sets that span more models: comparing models with each
other is what a leaderboard and a reward model learn most from, and two samples of one model are
often near-duplicates.

Active selection (``select=uncertain``, pairs only): every candidate response is scored once by
``selection_model`` (a reward model or ensemble), and per prompt the pairs whose preference it is
least sure of come first -- the binary entropy of p = mean over members of sigmoid(r_a - r_b),
high where the members disagree or each puts the two responses close (uncertainty sampling;
Christiano et al. 2017 used ensemble disagreement). Whether that saves labels depends on the
data: bench/active_selection.py measures it against random selection on the synthetic world.

Idempotent: prompts and responses are keyed on their text (and model id) in the store, and a prompt
that already has ``pairs_per_prompt`` tasks among this run's responses gets no more; so re-running
the same command adds nothing, while new responses (a later round's policy) get tasks of their own.
Deterministic for a seed: sampling is seeded, and task selection uses its own generator.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path

import numpy as np

from rlhfkit.config import CollectConfig, save_config
from rlhfkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def collect(cfg: CollectConfig) -> dict:
    """Run `rlhf collect`; returns (and writes to ``output_dir/summary.json``) what it created."""
    from rlhfkit.feedback.store import FeedbackStore, NotFoundError

    store = FeedbackStore(cfg.store)
    try:
        guidelines = Path(cfg.guidelines).expanduser().read_text(encoding="utf-8") if cfg.guidelines else ""
        try:
            info = store.get_project(cfg.project)
            if cfg.guidelines and guidelines != info.guidelines:
                store.update_guidelines(cfg.project, guidelines)
        except NotFoundError:
            store.create_project(cfg.project, guidelines, cfg.annotators_per_task)
        before = _counts(store, cfg.project)

        if cfg.responses is not None:
            by_prompt = _import_responses(cfg.responses)
        else:
            by_prompt = _sample(cfg, _read_prompts(cfg))
        # by_prompt: prompt key (the text, or a conversation's canonical JSON: see _prompt_key) ->
        # list of (text, model_id, sampling) in a deterministic order
        response_ids: dict[str, list[tuple[int, str, str]]] = {}
        for prompt, items in by_prompt.items():
            pid = store.add_prompt(cfg.project, _prompt_value(prompt))
            seen: dict[tuple[str, str], int] = {}
            for text, model_id, sampling in items:
                if (text, model_id) not in seen:
                    seen[(text, model_id)] = store.add_response(pid, text, model_id, sampling)
            response_ids[prompt] = [(rid, text, model) for (text, model), rid in seen.items()]

        made = _make_tasks(store, cfg, response_ids)
        after = _counts(store, cfg.project)
        summary = {
            "project": cfg.project,
            "store": store.url,
            "prompts_added": after["prompts"] - before["prompts"],
            "responses_added": after["responses"] - before["responses"],
            "tasks_created": made["tasks"],
            "calibration_tasks_created": made["calibration"],
            "prompts_without_task": made["too_few"],
            "tasks_total": after["tasks"],
        }
        if "selection" in made:
            summary["selection"] = made["selection"]
    finally:
        store.close()
    save_config(cfg, cfg.output_dir)
    out = Path(cfg.output_dir) / "summary.json"
    out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("collect: %s", summary)
    return summary


def _counts(store, project: str) -> dict:
    from sqlalchemy import func, select

    from rlhfkit.feedback.store import Prompt, Response, Task

    pid = store.get_project(project).id
    with store._session.begin() as s:
        return {
            "prompts": s.scalar(select(func.count()).select_from(Prompt).where(Prompt.project_id == pid)),
            "responses": s.scalar(select(func.count()).select_from(Response).join(Prompt)
                                  .where(Prompt.project_id == pid)),
            "tasks": s.scalar(select(func.count()).select_from(Task).where(Task.project_id == pid)),
        }


# ---------------------------------------------------------------------------------------------
# sources


def _read_prompts(cfg: CollectConfig) -> list[PromptKey]:
    """The prompts to sample for, as by_prompt keys. A file whose ``prompt`` column holds
    conversations keeps them as conversations (each model renders them with its own chat template
    in :func:`_sample`, and the store shows them as a chat); otherwise the data layer reads it."""
    from rlhfkit.data.formats import normalize
    from rlhfkit.data.loading import read_records

    records = read_records(cfg.prompts, split=cfg.prompts_split)
    if any(isinstance(r, dict) and isinstance(r.get("prompt"), list) for r in records):
        numbers = records.row_numbers or list(range(1, len(records) + 1))
        keys = [_import_prompt(r if isinstance(r, dict) else {}, str(cfg.prompts), n)
                for r, n in zip(records, numbers)]
    else:
        rows, _ = normalize(records, "prompt", source=str(cfg.prompts))
        keys = [r["prompt"] for r in rows]
    prompts = list(dict.fromkeys(keys))  # de-duplicated, first-seen order
    return prompts[:cfg.max_prompts] if cfg.max_prompts else prompts


def _sample(cfg: CollectConfig, prompts: list[PromptKey]) -> dict[PromptKey, list[tuple[str, str, dict]]]:
    from rlhfkit.generation import sample_completions
    from rlhfkit.modeling import chat_renderer, load_causal_lm, load_tokenizer

    out: dict[PromptKey, list[tuple[str, str, dict]]] = {p: [] for p in prompts}
    names = cfg.model_names or list(cfg.models)
    for m, (path, name) in enumerate(zip(cfg.models, names)):
        tok = load_tokenizer(path)
        texts = _prompt_texts(prompts, chat_renderer(tok), path)
        model = load_causal_lm(path, tok)
        settings = {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                    "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed + m, "model_path": str(path)}
        # Each prompt repeated num_samples times in one call: one seeded stream, reproducible.
        keys = [p for p in prompts for _ in range(cfg.num_samples)]
        rows = sample_completions(model, tok, [texts[k] for k in keys], max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                  batch_size=cfg.batch_size, seed=cfg.seed + m)
        for key, row in zip(keys, rows):  # one row per prompt, in order
            if row["completion"].strip():  # an empty sample cannot be judged
                out[key].append((row["completion"], name, {**settings,
                                 "ended_with_eos": row["ended_with_eos"]}))
        del model
    return out


PromptKey = str | tuple[str, str]


def _prompt_texts(prompts: list[PromptKey], render, model_path) -> dict[PromptKey, str]:
    """What a model is given for each prompt: a string as is, a conversation through the model's
    chat template with the generation prompt (the sample is the assistant's next turn)."""
    out = {}
    for key in prompts:
        if isinstance(key, str):
            out[key] = key
        elif render is None:
            raise ConfigError(f"models: '{model_path}' has no chat template, and the prompts are "
                              "conversations; use a chat model or string prompts")
        else:
            out[key] = render(_prompt_value(key), True)
    return out


def _prompt_key(prompt: str | list[dict]) -> PromptKey:
    """A hashable key per prompt: the string itself, or ("chat", the conversation's canonical JSON),
    the spelling the store de-duplicates conversations on (``store.conversation``)."""
    from rlhfkit.feedback.store.conversation import canonical_json

    return prompt if isinstance(prompt, str) else ("chat", canonical_json(list(prompt)))


def _prompt_value(key: PromptKey) -> str | list[dict]:
    return json.loads(key[1]) if isinstance(key, tuple) else key


def _import_prompt(row: dict, path: str, n: int) -> PromptKey:
    """The row's prompt as a by_prompt key: a non-blank string, or a conversation (TRL's
    conversational format, ending with the user's turn) whose responses are the next assistant turn."""
    from rlhfkit.feedback.store import StoreError
    from rlhfkit.feedback.store.conversation import check_messages

    prompt = row.get("prompt")
    if isinstance(prompt, list):
        try:
            return _prompt_key(check_messages(prompt))
        except StoreError as e:
            raise DataError(e.reason, source=path, row=n, field="prompt") from None
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"expected a non-blank string or a list of chat messages, got {_short(prompt)}",
                        source=path, row=n, field="prompt")
    return prompt


def _import_text(row: dict, key: str, path: str, n: int) -> str:
    """A response: a non-blank string, or (conversational rows) a one-message assistant turn."""
    text = row.get(key)
    if isinstance(text, list) and len(text) == 1 and isinstance(text[0], dict) \
            and text[0].get("role") == "assistant":
        text = text[0].get("content")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"expected a non-blank string (or one assistant message), got {_short(text)}",
                        source=path, row=n, field=key)
    return text


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _import_responses(path: str) -> dict[PromptKey, list[tuple[str, str, dict | None]]]:
    """Rows ``prompt``, ``response``/``completion``, optional ``model_id``/``model``, ``sampling``.

    ``prompt`` may be a conversation (a list of ``{"role", "content"}`` messages, the data layer's
    conversational format) and the response then the assistant's next turn, as a string or as a
    one-message list ``[{"role": "assistant", "content": ...}]``."""
    from rlhfkit.data.loading import read_records

    if not os.path.exists(os.path.expanduser(path)):
        raise ConfigError(f"responses: file '{path}' does not exist")
    records = read_records(path)
    numbers = records.row_numbers or list(range(1, len(records) + 1))
    default_model = f"import:{Path(path).name}"
    out: dict[str, list[tuple[str, str, dict | None]]] = {}
    for row, n in zip(records, numbers):
        if not isinstance(row, dict):
            raise DataError("expected an object with named fields", source=path, row=n)
        prompt = _import_prompt(row, path, n)
        key = "response" if "response" in row else "completion"
        text = _import_text(row, key, path, n)
        mkey = "model_id" if "model_id" in row else "model"
        model = row.get(mkey, default_model)
        if model is None:
            model = default_model
        if not isinstance(model, str) or not model:
            raise DataError(f"expected a model id string, got {model!r}", source=path, row=n, field=mkey)
        sampling = row.get("sampling")
        if sampling is not None and not isinstance(sampling, dict):
            raise DataError(f"expected an object, got {sampling!r}", source=path, row=n, field="sampling")
        out.setdefault(prompt, []).append((text, model, sampling))
    if not out:
        raise DataError("contains no rows", source=path)
    return out


# ---------------------------------------------------------------------------------------------
# tasks


def _make_tasks(store, cfg: CollectConfig, response_ids: dict[str, list[tuple[int, str, str]]]) -> dict:
    """Create the missing tasks of every prompt; returns counts."""
    existing = _existing_sets(store, cfg.project)
    n_cal = sum(1 for _, cal in existing.values() if cal)
    rng = np.random.default_rng(cfg.seed)
    made: dict = {"tasks": 0, "calibration": 0, "too_few": 0}
    work = []  # (prompt, candidates, existing sets of the prompt, how many to make)
    for prompt, items in response_ids.items():
        by_text: dict[str, tuple[int, str, str]] = {}
        for rid, text, model in items:
            by_text.setdefault(text, (rid, model, text))  # identical texts cannot be compared
        cands = list(by_text.values())  # (response id, model, text)
        if len(cands) < cfg.task_size:
            made["too_few"] += 1
            continue
        # Only the tasks among this run's responses count: a re-run of the same command finds them all
        # (idempotent), while a later round's new samples get their own pairs_per_prompt tasks.
        mine = {rid for rid, _, _ in items}
        have = [s for s, (p, _) in existing.items() if p == prompt and s <= mine]
        todo = cfg.pairs_per_prompt - len(have)
        if todo > 0:  # a prompt with all its tasks needs no scoring either: re-runs stay cheap
            work.append((prompt, cands, set(have), todo))
    if cfg.select == "uncertain":
        rewards = _member_rewards(cfg, work)
        chosen_u, all_u = [], []
    for w, (prompt, cands, have, todo) in enumerate(work):
        if cfg.select == "uncertain":
            ranked, ent = rank_pairs_by_uncertainty(rewards[w], rng)
            sets = _take_pairs(cands, ranked, todo, have, rng)
            picked = {frozenset(ids) for ids in sets}
            all_u.extend(ent.values())
            chosen_u.extend(e for (i, j), e in ent.items() if frozenset((cands[i][0], cands[j][0])) in picked)
        else:
            sets = _choose_sets([(rid, model) for rid, model, _ in cands], cfg.task_size, todo, have, rng)
        for ids in sets:
            cal = n_cal < cfg.calibration
            store.create_task(cfg.project, ids, calibration=cal)
            existing[frozenset(ids)] = (prompt, cal)
            n_cal += cal
            made["tasks"] += 1
            made["calibration"] += cal
    if cfg.select == "uncertain":
        made["selection"] = {
            "select": "uncertain", "selection_model": str(cfg.selection_model),
            "members": int(rewards[0].shape[0]) if rewards else None,
            "candidate_pairs": len(all_u), "chosen_pairs": len(chosen_u),
            # bits: 1 = a coin flip for the reward model, 0 = certain
            "uncertainty_chosen_mean": float(np.mean(chosen_u)) if chosen_u else None,
            "uncertainty_all_mean": float(np.mean(all_u)) if all_u else None,
        }
    return made


def _member_rewards(cfg: CollectConfig, work: list) -> list[np.ndarray]:
    """Per work item, the selection model's rewards of its candidates, (M members, m candidates);
    all candidates of all prompts scored in one batched pass."""
    if not work:
        return []
    if any(isinstance(prompt, tuple) for prompt, _, _, _ in work):
        # The scorer takes prompt strings; which chat template a reward model expects is not known here.
        raise ConfigError("select=uncertain scores responses of string prompts only; conversational prompts "
                          "need select=random")
    from rlhfkit.scoring import RewardScorer

    try:
        scorer = RewardScorer(cfg.selection_model)
    except (OSError, ValueError) as e:
        raise ConfigError(f"selection_model '{cfg.selection_model}' cannot be loaded as a reward model: "
                          f"{e}") from None
    prompts = [prompt for prompt, cands, _, _ in work for _ in cands]
    texts = [text for _, cands, _, _ in work for _, _, text in cands]
    flat = scorer.score_members(prompts, texts, batch_size=cfg.batch_size)  # (M, total candidates)
    out, start = [], 0
    for _, cands, _, _ in work:
        out.append(flat[:, start:start + len(cands)])
        start += len(cands)
    return out


def preference_entropy(rewards_a: np.ndarray, rewards_b: np.ndarray) -> np.ndarray:
    """Predictive uncertainty of "A preferred to B", in bits, per pair.

    ``rewards_a``, ``rewards_b``: (M members, P pairs) (or (P,) for one model). Each member gives
    the Bradley-Terry probability sigmoid(r_a - r_b); their mean p is the ensemble's prediction,
    and its binary entropy -p log2 p - (1-p) log2 (1-p) is 1 for a coin flip -- members that
    disagree (+3 and -3) or all see the pair as close -- and 0 for a sure call."""
    ra = np.atleast_2d(np.asarray(rewards_a, dtype=np.float64))  # (M, P)
    rb = np.atleast_2d(np.asarray(rewards_b, dtype=np.float64))  # (M, P)
    p = (1.0 / (1.0 + np.exp(-(ra - rb)))).mean(0)  # (P,)
    p = np.clip(p, 1e-12, 1 - 1e-12)  # 0 log 0 = 0
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def rank_pairs_by_uncertainty(rewards: np.ndarray, rng: np.random.Generator
                              ) -> tuple[list[tuple[int, int]], dict[tuple[int, int], float]]:
    """All pairs (i < j) of m candidates, most uncertain first, and each pair's entropy.

    ``rewards``: (M members, m candidates). Equal entropies are ordered at random (``rng``), so
    that, e.g., an untrained model's all-zero scores reduce to random selection."""
    r = np.atleast_2d(np.asarray(rewards, dtype=np.float64))  # (M, m)
    pairs = list(itertools.combinations(range(r.shape[1]), 2))
    if not pairs:
        return [], {}
    i, j = np.array(pairs).T  # (P,) each
    ent = preference_entropy(r[:, i], r[:, j])  # (P,)
    shuffled = rng.permutation(len(pairs))
    # Rounded so float noise in equal-looking scores does not decide; stable sort keeps the shuffle.
    order = shuffled[np.argsort(-np.round(ent[shuffled], 12), kind="stable")]
    return [pairs[k] for k in order], {pairs[k]: float(ent[k]) for k in range(len(pairs))}


def _take_pairs(cands: list[tuple[int, str, str]], ranked: list[tuple[int, int]], n: int, taken: set,
                rng: np.random.Generator) -> list[list[int]]:
    """The first ``n`` ranked pairs that are not tasks yet, as response ids in random order."""
    out: list[list[int]] = []
    for i, j in ranked:
        ids = [cands[i][0], cands[j][0]]
        if frozenset(ids) in taken:
            continue
        out.append([ids[k] for k in rng.permutation(2)])
        if len(out) == n:
            break
    return out


def _existing_sets(store, project: str) -> dict[frozenset, tuple[str, bool]]:
    return {frozenset(t["response_ids"]):
            (_prompt_key(t["prompt"] if t["messages"] is None else t["messages"]), t["calibration"])
            for t in store.tasks(project)}


def _choose_sets(cands: list[tuple[int, str]], k: int, n: int, taken: set,
                 rng: np.random.Generator) -> list[list[int]]:
    """Up to ``n`` new k-subsets of ``cands`` (response id, model), most distinct models first,
    random otherwise; each returned in a random (canonical) order."""
    m = len(cands)
    if k == 2 or m <= 12:  # enumerable: C(12, 6) = 924 at most
        pool = [list(c) for c in itertools.combinations(range(m), k)]
        pool = [pool[i] for i in rng.permutation(len(pool))]
    else:  # too many subsets to list: draw random ones
        pool = [sorted(rng.choice(m, size=k, replace=False).tolist()) for _ in range(50 * n)]
    scored = sorted(pool, key=lambda idx: -len({cands[i][1] for i in idx}))  # stable: random within a score
    out: list[list[int]] = []
    seen = set(taken)
    for idx in scored:
        ids = [cands[i][0] for i in idx]
        if frozenset(ids) in seen:
            continue
        seen.add(frozenset(ids))
        out.append([ids[i] for i in rng.permutation(k)])
        if len(out) == n:
            break
    return out
