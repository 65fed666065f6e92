"""The review grammar: determinism, the corpus/SFT/prompt formats, the lexicon and the vocabulary."""

import random
import re
import statistics

import pytest

from rlhfkit.synthetic import grammar
from rlhfkit.synthetic.grammar import (
    DIMINISHERS,
    INTENSIFIERS,
    NEGATORS,
    SENTIMENT,
    TERMINATOR,
    follows_format,
    generate_corpus,
    generate_filler,
    generate_review,
    make_prompts,
    make_sft_pairs,
    tokenize,
    vocabulary,
)

PROMPT_RE = re.compile(r"^review of the ((film|movie) [a-z]+ [a-z]+|[a-z]+) :$")


def n_sentences(text: str) -> int:
    return tokenize(text).count(TERMINATOR)


def first_continuation(doc: str) -> str:
    """What follows the first ``review of ... :`` header, up to the next header."""
    return " " + doc.split(" : ", 1)[1].split(" review of ")[0]


def test_same_seed_same_output_and_different_seeds_differ():
    assert generate_corpus(50, 3) == generate_corpus(50, 3)
    assert make_prompts(50, 3) == make_prompts(50, 3)
    assert make_sft_pairs(50, 3) == make_sft_pairs(50, 3)
    assert generate_corpus(50, 3) != generate_corpus(50, 4)
    assert make_prompts(50, 3) != make_prompts(50, 4)
    assert make_sft_pairs(50, 3) != make_sft_pairs(50, 4)
    assert generate_review(random.Random(7)) == generate_review(random.Random(7))
    # No hidden use of the global generator: reseeding it changes nothing.
    random.seed(0)
    a = generate_corpus(20, 1)
    random.seed(1)
    assert generate_corpus(20, 1) == a


def test_generate_review_sentence_counts():
    rng = random.Random(0)
    counts = [n_sentences(generate_review(rng)) for _ in range(500)]
    assert set(counts) == {1, 2, 3}  # 1–3 by default, all three occur
    assert all(n_sentences(generate_review(rng, n_sentences=5)) == 5 for _ in range(50))
    # Headerless, so the review names its subject itself.
    assert all(":" not in generate_review(rng) for _ in range(50))


def test_corpus_documents_are_long():
    docs = generate_corpus(2000, 0)
    counts = [n_sentences(d) for d in docs]
    assert statistics.fmean(counts) >= 3
    assert min(counts) >= 3  # no document stops after one or two sentences
    assert all(d == d.strip() and "  " not in d and d.endswith(" .") for d in docs)


def test_corpus_continuations_mostly_do_not_fit_the_sft_format():
    docs = [d for d in generate_corpus(2000, 0) if d.startswith("review of ")]
    assert len(docs) > 1500  # most documents open with a prompt-style header
    fits = [follows_format(first_continuation(d)) for d in docs]
    assert sum(fits) / len(fits) < 0.1


def test_sft_pairs_follow_the_format():
    rows = make_sft_pairs(3000, 1)
    assert all(set(r) == {"prompt", "completion"} for r in rows)
    assert all(follows_format(r["completion"]) for r in rows)  # 100%
    assert all(r["completion"].startswith(" ") and not r["completion"].startswith("  ") for r in rows)
    assert all(PROMPT_RE.match(r["prompt"]) for r in rows)
    # prompt + completion reads as one text: a header, then 1–2 terminated sentences.
    assert {n_sentences(r["completion"]) for r in rows} == {1, 2}
    assert all((r["prompt"] + r["completion"]).split(" : ")[1].endswith(" .") for r in rows)


def test_prompts_are_review_openings():
    prompts = make_prompts(1000, 2)
    assert all(PROMPT_RE.match(p) for p in prompts)
    assert not any(TERMINATOR in tokenize(p) for p in prompts)  # an opening, not a finished sentence
    films = sum(" film " in p or " movie " in p for p in prompts)
    assert 350 < films < 650  # both domains well represented
    film_prompts = [p for p in prompts if " film " in p or " movie " in p]
    assert len(set(film_prompts)) > 0.8 * len(film_prompts)  # titles make film openings varied
    assert {p.split()[3] for p in prompts if p not in film_prompts} == set(grammar.PRODUCTS)
    assert not any(w in SENTIMENT for p in prompts for w in tokenize(p))  # prompts carry no opinion


def test_every_emitted_token_is_in_the_vocabulary():
    vocab = vocabulary()
    assert vocab == sorted(set(vocab))
    assert 300 <= len(vocab) <= 600
    assert {".", ",", ":"} <= set(vocab)
    assert all(w == w.lower() and " " not in w for w in vocab)
    seen: set[str] = set()
    for d in generate_corpus(3000, 5):
        seen.update(tokenize(d))
    for p in make_prompts(1000, 6):
        seen.update(tokenize(p))
    for r in make_sft_pairs(3000, 7):
        seen.update(tokenize(r["prompt"] + r["completion"]))
    assert seen <= set(vocab)
    assert len(seen) > 0.9 * len(vocab)  # the vocabulary list is not padded with dead words
    assert set(SENTIMENT) <= set(vocab)
    assert set(NEGATORS) | set(INTENSIFIERS) <= set(vocab)
    assert {w for d in DIMINISHERS for w in d.split()} <= set(vocab)
    # whitespace-split text and the lenient tokenizer agree on grammar text
    assert generate_corpus(5, 0)[0].split() == tokenize(generate_corpus(5, 0)[0])


def test_sentiment_lexicon_is_graded():
    assert SENTIMENT["terrible"] == -3 and SENTIMENT["awful"] == -3
    assert SENTIMENT["bad"] == -2 and SENTIMENT["boring"] == -2
    assert SENTIMENT["dull"] == -1 and SENTIMENT["weak"] == -1
    assert SENTIMENT["fine"] == 1 and SENTIMENT["decent"] == 1
    assert SENTIMENT["good"] == 2 and SENTIMENT["fun"] == 2
    assert SENTIMENT["wonderful"] == 3 and SENTIMENT["brilliant"] == 3
    for grade in (-3, -2, -1, 1, 2, 3):
        assert sum(v == grade for v in SENTIMENT.values()) >= 5
    assert set(SENTIMENT.values()) == {-3, -2, -1, 1, 2, 3}
    modifiers = set(NEGATORS) | set(INTENSIFIERS) | {w for d in DIMINISHERS for w in d.split()}
    assert not modifiers & set(SENTIMENT)
    assert {"not", "never"} <= set(NEGATORS) and {"very", "truly", "really"} <= set(INTENSIFIERS)
    assert grammar.TERMINATOR == "."


def test_filler_is_neutral():
    rng = random.Random(0)
    modifiers = set(NEGATORS) | set(INTENSIFIERS) | {"bit", "somewhat", "slightly"}
    for domain in ("film", "product", None):
        for _ in range(300):
            words = tokenize(generate_filler(rng, domain))
            assert words[-1] == "."
            assert not (set(words) & (set(SENTIMENT) | modifiers)), words


def test_modifiers_precede_a_sentiment_word():
    """Negators, intensifiers and diminishers bind to the next sentiment word of their clause."""
    mods = set(NEGATORS) | set(INTENSIFIERS) | {"somewhat", "slightly", "bit"}
    n_mod = 0
    for d in generate_corpus(500, 9):
        toks = d.split()
        for i, t in enumerate(toks):
            if t in mods:
                n_mod += 1
                j = i + 1
                while toks[j] in mods:
                    j += 1
                assert toks[j] in SENTIMENT, toks[i:j + 1]
    assert n_mod > 500


def test_review_sentiment_is_balanced_with_a_wide_spread():
    from rlhfkit.synthetic.gold import gold_breakdown

    rng = random.Random(0)
    raw = [gold_breakdown(generate_review(rng)).raw for _ in range(4000)]
    mean, sd = statistics.fmean(raw), statistics.pstdev(raw)
    assert abs(mean) < 0.1 * sd
    assert sd > 2.0
    assert sum(r >= 3 for r in raw) > 400 and sum(r <= -3 for r in raw) > 400


@pytest.mark.parametrize("text,ok", [
    (" the film was good .", True),
    ("the film was good . the plot felt dull , but the acting was fine .", True),
    (" the film was good.", True),  # lenient about a missing space before "."
    ("", False),
    ("   ", False),
    (" the film was good", False),  # no terminator
    (" it was good . it was fine . it was okay .", False),  # three sentences
    (" the film was gud .", False),  # not a grammar word
    (" The film was good .", False),  # capitals are not in the grammar
    (" review of the kettle : it was good .", False),  # began a new review
    (" . .", False),
    (" , .", False),
])
def test_follows_format(text, ok):
    assert follows_format(text) is ok

