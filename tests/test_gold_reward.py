"""The gold reward: hand-computed values, the direction of each rule, and its penalties."""

import math
import random
import statistics

import pytest

from rlhfkit.synthetic import gold
from rlhfkit.synthetic.gold import (
    MAX_REWARD,
    MIN_REWARD,
    gold_breakdown,
    gold_reward,
    gold_reward_fn,
    gold_rewards,
)
from rlhfkit.synthetic.grammar import generate_corpus, make_sft_pairs


def approx(x):
    return pytest.approx(x, abs=1e-9)


# Hand-computed from the module docstring: raw = sum of modifier-product * lexicon value,
# reward = tanh(raw / 3) - penalties. Negation x(-0.5), intensifier x1.5, diminisher x0.5.
@pytest.mark.parametrize("text,raw", [
    (" the film was very good .", 1.5 * 2),                    # tanh(1) = 0.7616
    (" the film was good .", 2),
    (" the film was not good .", -0.5 * 2),
    (" the film was not very good .", -0.5 * 1.5 * 2),         # scope chains until the sentiment word
    (" the film was not bad .", -0.5 * -2),                    # "not bad" ~ "fine"
    (" the kettle was a bit noisy .", 0.5 * -2),               # two-word diminisher
    (" i would never recommend it .", -0.5 * 2),
    (" the plot was not bad , but the acting was good .", 1 + 2),  # "," ends the negation's scope
    (" the film was terrible . the plot was really clever .", -3 + 1.5 * 2),
    (" it runs about two hours .", 0),                         # neutral filler
])
def test_hand_computed_values(text, raw):
    b = gold_breakdown(text)
    assert b.raw == approx(raw)
    assert b.penalties == {}
    assert gold_reward(text) == approx(math.tanh(raw / 3))


def test_very_good_by_hand():
    assert gold_reward(" the film was very good .") == approx(0.7615941559557649)  # tanh(1)
    b = gold_breakdown(" the film was terrible . the plot was really clever .")
    assert b.sentence_scores == [approx(-3.0), approx(3.0)]  # summed per sentence


def test_direction_of_each_rule():
    g = gold_reward
    assert g(" the film was wonderful .") > g(" the film was good .") > g(" the film was fine .")
    assert g(" the film was fine .") > g(" the film is set in paris .") == 0.0 > g(" the film was dull .")
    assert g(" the film was dull .") > g(" the film was bad .") > g(" the film was terrible .")
    assert g(" the film was not good .") < g(" the film was good .")  # negation lowers
    assert g(" the film was not bad .") > g(" the film was bad .")  # ... and lifts a negative
    assert g(" the film was very good .") > g(" the film was good .")  # intensifier raises
    assert g(" the film was very bad .") < g(" the film was bad .")
    assert 0 < g(" the film was somewhat good .") < g(" the film was good .")  # diminisher weakens


def test_saturation_gives_diminishing_returns():
    one = gold_reward(" the film was good .")
    two = gold_reward(" the film was good . the acting was great .")
    three = gold_reward(" the film was good . the acting was great . the plot was clever .")
    assert 0 < three - two < two - one < one
    assert three < MAX_REWARD


def test_repeating_positive_words_scores_lower_than_a_normal_sentence():
    normal = gold_reward(" the film was good .")
    spam = " good good good good good good ."
    # raw 12 -> tanh(4); 4 uses of "good" beyond two (1.0); repeated bigrams 4/6 (2*(4/6-0.35));
    # five sentiment words stacked in one clause plus a clause with no ordinary word (6 * 0.25):
    # far below the floor, so clipped.
    assert gold_reward(spam) == MIN_REWARD
    b = gold_breakdown(spam)
    assert b.penalties["repeated_words"] == approx(1.0)
    assert b.penalties["repeated_bigrams"] == approx(2 * (4 / 6 - 0.35))
    assert b.penalties["ungrammatical"] == approx(1.5)
    # A subtler hack: tanh(8/3) - 0.5 (2 extra "good") - 2*(0.4-0.35) - 3 * 0.25 (three clauses
    # ", good" with no ordinary word).
    subtle = " the film was good , good , good , good ."
    assert gold_reward(subtle) == approx(math.tanh(8 / 3) - 0.5 - 0.1 - 0.75)
    assert gold_reward(subtle) < normal
    # Stacking modifiers: a third modifier in a row is ungrammatical, and the bigrams repeat.
    assert gold_reward(" the film was very very very very good .") < gold_reward(" the film was very good .")
    assert gold_reward(" it was great . it was great . it was great . it was great .") < normal


def test_stacking_distinct_positive_words_scores_lower_than_a_normal_sentence():
    """Piling up *different* positive words dodges the repetition penalty but not the clause rule."""
    normal = gold_reward(" the film was wonderful .")  # tanh(1)
    # Each extra sentiment word in a clause, and each clause made of a bare sentiment word, is one
    # ungrammatical event (0.25): raw 12 saturates, so three events cost more than it gains.
    for hack in (" the film was wonderful and brilliant and amazing and superb .",
                 " the film was wonderful , brilliant , excellent , amazing .",
                 " the film was wonderful brilliant excellent amazing ."):
        assert gold_breakdown(hack).penalties == {"ungrammatical": approx(0.75)}, hack
        assert gold_reward(hack) == approx(math.tanh(4) - 0.75)
        assert gold_reward(hack) < normal
    assert gold_reward(" wonderful . brilliant . excellent .") == approx(math.tanh(3) - 0.75)
    assert gold_reward(" the film was wonderful . brilliant .") == approx(math.tanh(2) - 0.25)
    assert gold_reward(" the film was wonderful . brilliant .") < normal
    # Proper clauses, each with its subject, are fine (and saturate instead).
    assert gold_breakdown(" i loved it and the plot was superb .").penalties == {}


def test_grammar_text_is_never_penalised_as_ungrammatical():
    """The penalties target degenerate text only: every sentence the grammar writes passes."""
    texts = [r["completion"] for r in make_sft_pairs(2000, 4)]
    for doc in generate_corpus(300, 4):
        body = doc.split(" : ", 1)[-1].split(" review of ")[0]
        sents = [s.strip() + " ." for s in body.split(" .") if s.strip()]
        texts += [" " + " ".join(sents[i:i + 3]) for i in range(0, len(sents), 3)]
    for t in texts:
        assert gold_breakdown(t).penalties == {}, t


def test_missing_terminator_lowers_the_score():
    assert gold_reward(" the film was very good") == approx(math.tanh(1) - 0.5)
    assert gold_reward(" the film was very good") < gold_reward(" the film was very good .")
    assert gold_breakdown(" the film was good . the plot was").penalties == {"no_terminator": 0.5}


def test_empty_gets_the_minimum():
    for text in ("", "   ", " .", " , . ."):
        assert gold_reward(text) == MIN_REWARD == -1.5
    rng = random.Random(0)
    pool = ["good", "the", ".", ",", "xyz", "very"]
    garbage = [" ".join(rng.choice(pool) for _ in range(rng.randint(1, 60))) for _ in range(500)]
    texts = garbage + generate_corpus(200, 0) + [r["completion"] for r in make_sft_pairs(500, 0)]
    scores = gold_rewards(texts)
    assert min(scores) >= MIN_REWARD and max(scores) <= MAX_REWARD


def test_ungrammatical_runs_are_penalised():
    base = math.tanh(2 / 3)
    assert gold_reward(" the film was gud .") == approx(-0.25)  # out of vocabulary
    assert gold_reward(" The film was good .") == approx(base - 0.25)  # capitals are outside the grammar
    assert gold_reward(" the film was good wonderful .") == approx(math.tanh(5 / 3) - 0.25)  # adjacent
    assert gold_reward(" the film was good . .") == approx(base - 0.25)  # punctuation run
    assert gold_reward(" the film was good , but very .") == approx(base - 0.25)  # dangling modifier
    assert gold_reward(" the film was good.") == approx(base)  # a missing space is not punished


def test_too_long_is_penalised():
    four = " the film was good . the plot was fine . the cast was decent . the music was nice ."
    assert gold_breakdown(four).penalties == {"too_long": approx(0.5 + 0.1)}
    assert gold_reward(four) == approx(math.tanh(5 / 3) - 0.6)
    assert gold_reward(four) < gold_reward(" the film was good . the plot was fine .")
    many_words = " the film was good and " + "the plot was set in the city and " * 6 + "i liked it ."
    assert "too_long" in gold_breakdown(many_words).penalties


def test_off_topic_needs_a_prompt():
    good = math.tanh(2 / 3)
    assert gold_reward(" the blender was good .", "review of the kettle :") == approx(good - 0.25)
    assert gold_reward(" the film was good .", "review of the kettle :") == approx(good - 0.25)
    assert gold_reward(" the price was good .", "review of the film lost river :") == approx(good - 0.25)
    assert gold_reward(" the kettle was good .", "review of the kettle :") == approx(good)
    assert gold_reward(" the film was good .", "review of the film x :") == approx(good)
    assert gold_reward(" the blender was good .") == approx(good)  # no prompt, no topic check


def test_batch_api_and_reward_fn_signature():
    rows = make_sft_pairs(200, 3)
    prompts, comps = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    expected = [gold_reward(c, p) for c, p in zip(comps, prompts)]
    assert gold_rewards(comps, prompts) == expected
    assert gold_reward_fn(prompts, comps) == expected
    assert gold_rewards(comps) == [gold_reward(c) for c in comps]
    assert gold_rewards(comps, prompts) == gold_rewards(comps, prompts)  # deterministic
    with pytest.raises(ValueError):
        gold_rewards(comps, prompts[:-1])


def test_sft_completions_have_a_wide_spread():
    rows = make_sft_pairs(3000, 1)
    scores = gold_rewards([r["completion"] for r in rows], [r["prompt"] for r in rows])
    assert statistics.pstdev(scores) > 0.4  # room for RLHF to move the policy
    assert abs(statistics.fmean(scores)) < 0.1  # centred: the demonstrations are not already positive
    assert sum(s > 0.5 for s in scores) > 300 and sum(s < -0.5 for s in scores) > 300
    # Far from the ceiling on average, so improvement is measurable.
    assert statistics.fmean(scores) < MAX_REWARD - 0.5


def test_long_unterminated_continuations_score_below_sft_completions():
    """Base-model-like text (a corpus review cut at 40 words) loses to the short, terminated format."""
    cut = [" " + " ".join(d.split(" : ", 1)[-1].split()[:40]) for d in generate_corpus(1000, 0)]
    sft = [r["completion"] for r in make_sft_pairs(1000, 0)]
    assert statistics.fmean(gold_rewards(cut)) < statistics.fmean(gold_rewards(sft)) - 0.3


def test_constants_match_the_documented_scale():
    assert (gold.MIN_REWARD, gold.MAX_REWARD, gold.SCALE) == (-1.5, 1.0, 3.0)
    assert (gold.NEGATION, gold.INTENSIFY, gold.DIMINISH) == (-0.5, 1.5, 0.5)

