"""Format detection and normalisation: exact outputs per format, and a clear DataError
(file, row, field) for every kind of bad row."""

from __future__ import annotations

import json

import pytest

from rlhfkit.data import NormalizeReport, detect_format, normalize, ranking_to_pairs, read_records
from rlhfkit.errors import DataError

SRC = "data.jsonl"


def render(msgs: list[dict], gen: bool) -> str:
    """A toy chat template: one line per message, generation prompt '<|assistant|>'."""
    return "".join(f"<|{m['role']}|>{m['content']}\n" for m in msgs) + ("<|assistant|>" if gen else "")


def norm(rows, kind, **kw):
    kw.setdefault("render_chat", render)
    return normalize(rows, kind, source=SRC, **kw)


def user(text):
    return {"role": "user", "content": text}


def asst(text):
    return {"role": "assistant", "content": text}


# ---------------------------------------------------------------------------- detection


@pytest.mark.parametrize("cols,fmt", [
    (["text"], "text"),
    (["prompt", "completion"], "prompt_completion"),
    (["messages"], "messages"),
    (["prompt", "chosen", "rejected", "margin"], "preference"),
    (["chosen", "rejected"], "implicit_preference"),
    (["prompt", "responses", "ranks"], "ranking"),
    (["prompt", "responses"], "ranking"),
    (["prompt", "id"], "prompt_only"),
])
def test_detect_format(cols, fmt):
    assert detect_format(cols, source=SRC) == fmt


def test_detect_format_unknown_names_source_and_columns():
    with pytest.raises(DataError) as e:
        detect_format(["question", "answer"], source=SRC)
    msg = str(e.value)
    assert SRC in msg and "'answer'" in msg and "'question'" in msg and "'prompt'+'completion'" in msg


def test_format_detected_from_most_rows_not_a_bad_first_row():
    rows = [{"prompt": "p", "chosen": "a"}, {"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "q", "chosen": "c", "rejected": "d"}]
    out, rep = norm(rows, "preference", skip_invalid=True)
    assert rep.format == "preference" and rep.skipped == {"missing field": 1} and len(out) == 2


def test_kind_format_mismatch_is_a_file_error():
    with pytest.raises(DataError, match=r"data.jsonl: the rows are in 'preference' format.*kind 'pref"):
        norm([{"prompt": "p", "chosen": "a", "rejected": "b"}], "sft", skip_invalid=True)
    with pytest.raises(DataError, match="'text' format"):
        norm([{"text": "hello"}], "preference")


# ---------------------------------------------------------------------------- SFT


def test_sft_text():
    out, rep = norm([{"text": "hello world", "id": 3}], "sft")
    assert out == [{"prompt": "", "completion": "hello world"}]
    assert (rep.total, rep.kept, rep.format) == (1, 1, "text")


def test_sft_prompt_completion():
    out, _ = norm([{"prompt": "Q: 2+2?", "completion": " 4", "extra": 1}], "sft")
    assert out == [{"prompt": "Q: 2+2?", "completion": " 4"}]


def test_sft_messages_chat_template():
    rows = [{"messages": [{"role": "system", "content": "be brief"}, user("hi"), asst("hello")]}]
    out, _ = norm(rows, "sft")
    assert out == [{"prompt": "<|system|>be brief\n<|user|>hi\n<|assistant|>", "completion": "hello\n"}]


def test_sft_conversational_prompt_completion():
    out, _ = norm([{"prompt": [user("hi")], "completion": [asst("hello")]}], "sft")
    assert out == [{"prompt": "<|user|>hi\n<|assistant|>", "completion": "hello\n"}]


def test_conversational_rows_without_chat_template():
    rows = [{"messages": [user("hi"), asst("hello")]}]
    with pytest.raises(DataError, match=r"data.jsonl, row 1, field 'messages': .*tokenizer with a chat"):
        normalize(rows, "sft", source=SRC, skip_invalid=True)


def test_chat_template_that_does_not_extend_prompt():
    def bad(msgs, gen):  # the prompt render has a marker the full render lacks
        return render(msgs, False) + ("<|gen|>" if gen else "")
    with pytest.raises(DataError, match=r"row 1, field 'messages': the chat template renders"):
        normalize([{"messages": [user("hi"), asst("hello")]}], "sft", source=SRC, render_chat=bad)


def test_chat_template_exception_becomes_data_error():
    def strict(msgs, gen):
        raise ValueError("Conversation roles must alternate")
    with pytest.raises(DataError, match="row 1, field 'messages': the chat template failed: ValueError"):
        normalize([{"messages": [user("hi"), asst("hello")]}], "sft", source=SRC, render_chat=strict)


# ---------------------------------------------------------------------------- preference


def test_preference_explicit_with_margin():
    rows = [{"prompt": "p", "chosen": " good", "rejected": " bad", "margin": 2, "score": 9},
            {"prompt": "q", "chosen": " yes", "rejected": " no", "margin": None},
            {"prompt": "r", "chosen": " a", "rejected": " b", "margin": "0.5"}]  # CSV cells are strings
    out, _ = norm(rows, "preference")
    assert out == [{"prompt": "p", "chosen": " good", "rejected": " bad", "margin": 2.0},
                   {"prompt": "q", "chosen": " yes", "rejected": " no"},
                   {"prompt": "r", "chosen": " a", "rejected": " b", "margin": 0.5}]
    assert isinstance(out[0]["margin"], float)


def test_preference_implicit_hh():
    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: bye"}]
    out, rep = norm(rows, "preference")
    assert rep.format == "implicit_preference"
    assert out == [{"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " hello", "rejected": " bye"}]


def test_preference_implicit_hh_multi_turn_and_shared_reply_start():
    base = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    out, _ = norm([{"chosen": base + " sure, here", "rejected": base + " sure, no"}], "preference")
    assert out == [{"prompt": base, "chosen": " sure, here", "rejected": " sure, no"}]


def test_preference_implicit_plain_text_cuts_at_whitespace():
    out, _ = norm([{"chosen": "The film was good", "rejected": "The film was great fun"}], "preference")
    # the common prefix "The film was g" is cut before its last space, not inside "good"/"great"
    assert out == [{"prompt": "The film was", "chosen": " good", "rejected": " great fun"}]


def test_preference_conversational_explicit_and_implicit():
    explicit = {"prompt": [user("hi")], "chosen": [asst("hello")], "rejected": [asst("go away")]}
    implicit = {"chosen": [user("hi"), asst("hello")], "rejected": [user("hi"), asst("go away")]}
    want = {"prompt": "<|user|>hi\n<|assistant|>", "chosen": "hello\n", "rejected": "go away\n"}
    assert norm([explicit], "preference")[0] == [want]
    assert norm([implicit], "preference")[0] == [want]


# ---------------------------------------------------------------------------- ranking


def test_ranking_rows_explicit_and_implicit_ranks():
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "ranks": [2, 1, 2]},
            {"prompt": "q", "responses": ["x", "y"]}]
    out, _ = norm(rows, "ranking")
    assert out == [{"prompt": "p", "responses": ["a", "b", "c"], "ranks": [2, 1, 2]},
                   {"prompt": "q", "responses": ["x", "y"], "ranks": [1, 2]}]


def test_pairs_become_two_way_rankings():
    rows = [{"prompt": "p", "chosen": " good", "rejected": " bad", "margin": 1.0}]
    out, _ = norm(rows, "ranking")
    assert out == [{"prompt": "p", "responses": [" good", " bad"], "ranks": [1, 2]}]


def test_tied_pairs_read_as_rankings_stay_tied():
    # Regression: a pair row with `tie: true` read as a ranking used to become ranks [1, 2], a
    # win for "chosen". Equal ranks are the ranking schema's tie, so it must become [1, 1], for
    # explicit and implicit (shared-prompt) pairs and every accepted spelling of the flag.
    explicit = [{"prompt": "p", "chosen": " a", "rejected": " b", "tie": True},
                {"prompt": "p", "chosen": " a", "rejected": " c", "tie": "true"},
                {"prompt": "p", "chosen": " a", "rejected": " d", "tie": 1},
                {"prompt": "p", "chosen": " a", "rejected": " e", "tie": False},
                {"prompt": "p", "chosen": " a", "rejected": " f", "tie": None},
                {"prompt": "p", "chosen": " a", "rejected": " g"}]
    out, _ = norm(explicit, "ranking")
    assert [r["ranks"] for r in out] == [[1, 1], [1, 1], [1, 1], [1, 2], [1, 2], [1, 2]]
    assert out[0] == {"prompt": "p", "responses": [" a", " b"], "ranks": [1, 1]}
    implicit = [{"chosen": "Q: hi A: hello", "rejected": "Q: hi A: bye", "tie": "yes"},
                {"chosen": "Q: hi A: hello", "rejected": "Q: hi A: go", "tie": "false"}]
    out, _ = norm(implicit, "ranking")
    assert out == [{"prompt": "Q: hi A:", "responses": [" hello", " bye"], "ranks": [1, 1]},
                   {"prompt": "Q: hi A:", "responses": [" hello", " go"], "ranks": [1, 2]}]
    conversational = [{"prompt": [user("hi")], "chosen": [asst("hello")], "rejected": [asst("yo")],
                       "tie": True}]
    assert norm(conversational, "ranking")[0][0]["ranks"] == [1, 1]
    # the tied pair is no preference: expanding it back to pairs gives none (never chosen > rejected)
    assert ranking_to_pairs(norm(explicit[:1], "ranking")[0][0]) == []
    # the tie flag is checked on this path too, as for kind 'preference'
    with pytest.raises(DataError, match=r"data.jsonl, row 1, field 'tie'"):
        norm([{"prompt": "p", "chosen": "a", "rejected": "b", "tie": "maybe"}], "ranking")
    # a ranking row of the user's with all ranks equal is still refused: without an explicit tie
    # flag it is far more likely a broken ranks column than a statement that all are equal
    with pytest.raises(DataError, match="all responses have the same rank"):
        norm([{"prompt": "p", "responses": ["a", "b"], "ranks": [2, 2]}], "ranking")


def test_ranking_to_pairs_with_tie():
    row = {"prompt": "p", "responses": ["a", "b", "c", "d"], "ranks": [2, 1, 2, 3]}
    assert ranking_to_pairs(row) == [
        {"prompt": "p", "chosen": "b", "rejected": "a"},
        {"prompt": "p", "chosen": "a", "rejected": "d"},
        {"prompt": "p", "chosen": "b", "rejected": "c"},
        {"prompt": "p", "chosen": "b", "rejected": "d"},
        {"prompt": "p", "chosen": "c", "rejected": "d"},
    ]  # a~c tied: 5 of the C(4,2) = 6 pairs


def test_ranking_rows_are_refused_for_kind_preference():
    # Expanding a ranking into C(K, 2) pairs needs a weighting decision, so it is explicit.
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "ranks": [3, 1, 2]}]
    with pytest.raises(DataError, match=r"^data.jsonl: the rows are in 'ranking' format.*use kind 'ranking'"):
        norm(rows, "preference", skip_invalid=True)
    out, _ = norm(rows, "ranking")
    assert [p for r in out for p in ranking_to_pairs(r)] == [
        {"prompt": "p", "chosen": "b", "rejected": "a"},
        {"prompt": "p", "chosen": "c", "rejected": "a"},
        {"prompt": "p", "chosen": "b", "rejected": "c"}]


def test_ranking_to_pairs_best_first_and_bad_row():
    assert ranking_to_pairs({"prompt": "p", "responses": ["x", "y"]}) == [
        {"prompt": "p", "chosen": "x", "rejected": "y"}]
    with pytest.raises(DataError, match="field 'responses'"):
        ranking_to_pairs({"prompt": "p"})
    with pytest.raises(DataError, match="field 'ranks': has 1 ranks for 2 responses"):
        ranking_to_pairs({"prompt": "p", "responses": ["x", "y"], "ranks": [1]})


# ---------------------------------------------------------------------------- prompts


def test_prompt_kind_from_every_format():
    rows_by_format = {
        "prompt_only": [{"prompt": "tell me"}],
        "prompt_completion": [{"prompt": "tell me", "completion": " no"}],
        "preference": [{"prompt": "tell me", "chosen": " a", "rejected": " b"}],
        "ranking": [{"prompt": "tell me", "responses": ["a", "b"]}],
    }
    for fmt, rows in rows_by_format.items():
        out, rep = norm(rows, "prompt")
        assert rep.format == fmt and out == [{"prompt": "tell me"}]
    hh = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: bye"}]
    assert norm(hh, "prompt")[0] == [{"prompt": "\n\nHuman: hi\n\nAssistant:"}]
    chat = [{"messages": [user("hi"), asst("hello")]}, {"prompt": [user("yo")]}]
    assert norm(chat[:1], "prompt")[0] == [{"prompt": "<|user|>hi\n<|assistant|>"}]
    assert norm(chat[1:], "prompt")[0] == [{"prompt": "<|user|>yo\n<|assistant|>"}]


# ---------------------------------------------------------------------------- bad rows

GOOD_PAIR = {"prompt": "p", "chosen": " a", "rejected": " b"}

BAD_ROWS = [
    # (kind, bad row, field, words in the message, report category)
    ("preference", {"prompt": "p", "chosen": " a"}, "rejected", "missing required field", "missing field"),
    ("preference", {"prompt": "p", "chosen": 3, "rejected": " b"}, "chosen",
     "expected a string, got a number",
     "wrong type"),
    ("preference", {"prompt": ["p"], "chosen": " a", "rejected": " b"}, "prompt", "message 1 is a string",
     "bad message"),
    ("sft", {"prompt": "p", "completion": ["a"]}, "completion", "expected a string, got a list",
     "wrong type"),
    ("sft", {"prompt": "p", "completion": "  \n"}, "completion", "empty or whitespace only", "empty text"),
    ("sft", {"text": ""}, "text", "empty or whitespace only", "empty text"),
    ("preference", {"prompt": "p", "chosen": " a", "rejected": " a"}, "rejected", "identical",
     "chosen == rejected"),
    ("sft", {"messages": [{"role": "bot", "content": "hi"}, asst("x")]}, "messages",
     "message 1 has unknown role 'bot'", "bad message"),
    ("sft", {"messages": [{"role": "user"}, asst("x")]}, "messages", "message 1 (user) has no 'content'",
     "bad message"),
    ("sft", {"messages": [asst("x"), user("hi")]}, "messages", "last message must be from the assistant",
     "last message not from assistant"),
    ("ranking", {"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2, 3]}, "ranks",
     "3 ranks for 2 responses",
     "ranks length mismatch"),
    ("ranking", {"prompt": "p", "responses": ["a", "b"], "ranks": [1, 1.5]}, "ranks", "must be integers",
     "ranks not integers"),
    ("ranking", {"prompt": "p", "responses": ["a", "b"], "ranks": ["1", "2"]}, "ranks", "must be integers",
     "ranks not integers"),
    ("ranking", {"prompt": "p", "responses": ["a"]}, "responses", "at least 2 responses",
     "too few responses"),
    ("ranking", {"prompt": "p", "responses": ["a", "b"], "ranks": [1, 1]}, "ranks", "same rank", "all tied"),
    ("preference", {"chosen": "yes", "rejected": "no"}, "chosen", "share no prompt", "no shared prompt"),
    ("preference", {"prompt": "p", "chosen": " a", "rejected": " b", "margin": "big"}, "margin",
     "expected a finite number, got 'big'", "bad margin"),
    ("preference", {"prompt": "p", "chosen": None, "rejected": " b"}, "chosen", "is null", "null value"),
    ("sft", {"text": None}, "text", "is null", "null value"),
]


@pytest.mark.parametrize("kind,bad,field,words,category", BAD_ROWS)
def test_bad_row_raises_with_file_row_field(kind, bad, field, words, category):
    good = {"sft": {"prompt": "p", "completion": " c"} if "prompt" in bad else
            {"messages": [user("a"), asst("b")]} if "messages" in bad else {"text": "t"},
            "preference": GOOD_PAIR if "prompt" in bad else {"chosen": "Q: x A: y", "rejected": "Q: x A: z"},
            "ranking": {"prompt": "p", "responses": ["a", "b"]}}[kind]
    rows = [dict(good), dict(good), bad, dict(good)]
    with pytest.raises(DataError) as e:
        norm(rows, kind)
    assert (e.value.source, e.value.row, e.value.field) == (SRC, 3, field)
    msg = str(e.value)
    assert msg.startswith(f"{SRC}, row 3, field '{field}': ") and words in msg
    out, rep = norm(rows, kind, skip_invalid=True)
    assert (rep.total, rep.kept, dict(rep.skipped)) == (4, 3, {category: 1}) and len(rep.examples) == 1
    assert rep.examples[0] == msg


def test_implicit_hh_with_empty_response_after_cut():
    row = {"chosen": "\n\nHuman: hi\n\nAssistant:", "rejected": "\n\nHuman: hi\n\nAssistant: bye"}
    with pytest.raises(DataError, match=r"row 1, field 'chosen': once the shared prompt is removed, it is e"):
        norm([row], "preference")


def test_row_that_is_not_an_object():
    with pytest.raises(DataError) as e:
        norm([{"text": "a"}, ["b"]], "sft")
    assert str(e.value) == "data.jsonl, row 2: expected an object with named fields, got a list"


def test_skip_invalid_counts_by_reason_and_summary():
    rows = [GOOD_PAIR, {"prompt": "p", "chosen": " ", "rejected": " b"}, GOOD_PAIR,
            {"prompt": "p", "chosen": " x", "rejected": " x"}, {"prompt": "p", "chosen": "", "rejected": "b"}]
    out, rep = norm(rows, "preference", skip_invalid=True)
    assert isinstance(rep, NormalizeReport) and len(out) == 2
    assert (rep.total, rep.kept, rep.skipped) == (5, 2, {"empty text": 2, "chosen == rejected": 1})
    assert rep.summary() == "data.jsonl: kept 2/5 rows, skipped 3 (empty text: 2, chosen == rejected: 1)"
    assert rep.examples[0].startswith("data.jsonl, row 2, field 'chosen':")


def test_all_rows_invalid_raises_even_when_skipping():
    rows = [{"prompt": "p", "chosen": " x", "rejected": " x"}] * 3
    with pytest.raises(DataError, match=r"data.jsonl: all 3 rows are invalid \(chosen == rejected: 3\)"):
        norm(rows, "preference", skip_invalid=True)


def test_no_rows():
    with pytest.raises(DataError, match="no rows"):
        norm([], "sft")


def test_row_numbers_follow_jsonl_lines(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "a"}) + "\n\n\n" + json.dumps({"text": " "}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl, row 4, field 'text'"):
        normalize(read_records(f), "sft", source=str(f))


def test_normalize_20k_implicit_rows():
    # Speed is measured by benchmarks, not asserted here; this checks the bulk path is correct.
    rows = [{"chosen": f"\n\nHuman: q{i} " + "w " * 100 + f"\n\nAssistant: yes {i}",
             "rejected": f"\n\nHuman: q{i} " + "w " * 100 + f"\n\nAssistant: no {i}"} for i in range(20_000)]
    out, rep = norm(rows, "preference")
    assert rep.kept == 20_000 and out[5]["chosen"] == " yes 5"


def test_preference_tie_flag_is_kept_and_checked():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "tie": True},
            {"prompt": "p", "chosen": "a", "rejected": "c", "tie": "false"},
            {"prompt": "p", "chosen": "a", "rejected": "d"}]
    out, _ = normalize(rows, "preference", source="t.jsonl")
    assert [r.get("tie") for r in out] == [True, False, None]
    with pytest.raises(DataError, match=r"t.jsonl, row 1, field 'tie'"):
        normalize([{"prompt": "p", "chosen": "a", "rejected": "b", "tie": "maybe"}], "preference",
                  source="t.jsonl")
