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


# Hand-computed from the module docstring: raw = sum over clauses of substance weight * (sum of
# modifier-product * lexicon value), reward = tanh(raw / 3) - penalties. Negation x(-0.5),
# intensifier x1.5, diminisher x0.5; weight 1 for an aspect ("plot", "handle"), 0.5 for an aspect
# judged before, 0.6 for the subject ("film", "kettle"), 0.25 for a clause naming neither.
@pytest.mark.parametrize("text,raw", [
    (" the plot was very good .", 1.5 * 2),                    # tanh(1) = 0.7616
    (" the plot was good .", 2),
    (" the plot was not good .", -0.5 * 2),
    (" the plot was not very good .", -0.5 * 1.5 * 2),         # scope chains until the sentiment word
    (" the plot was not bad .", -0.5 * -2),                    # "not bad" ~ "fine"
    (" the motor was a bit noisy .", 0.5 * -2),                # two-word diminisher
    (" the film was very good .", 0.6 * 1.5 * 2),              # the subject: less than an aspect
    (" the kettle was a bit noisy .", 0.6 * 0.5 * -2),
    (" i would never recommend it .", 0.25 * -0.5 * 2),        # names nothing
    (" overall it was great .", 0.25 * 2),
    (" i loved the acting .", 3),                              # the aspect may follow the opinion
    (" the plot was not bad , but the acting was good .", 1 + 2),  # "," ends the negation's scope
    (" the plot was good , but the plot was dull .", 2 + 0.5 * -1),  # an aspect judged twice: half
    (" the film was terrible . the plot was really clever .", 0.6 * -3 + 1.5 * 2),
    (" i loved it and the plot was superb .", 0.25 * 3 + 3),
    (" it runs about two hours .", 0),                         # neutral filler
])
def test_hand_computed_values(text, raw):
    b = gold_breakdown(text)
    assert b.raw == approx(raw)
    assert b.penalties == {}
    assert gold_reward(text) == approx(math.tanh(raw / 3))


def test_very_good_by_hand():
    assert gold_reward(" the plot was very good .") == approx(0.7615941559557649)  # tanh(1)
    b = gold_breakdown(" the film was terrible . the plot was really clever .")
    assert b.sentence_scores == [approx(-1.8), approx(3.0)]  # weighted and summed per sentence


def test_generic_compliments_score_below_specific_reviews():
    """Substance: the collapsed demo policy's sentence ("i would truly recommend it .") must lose
    clearly to a specific positive review of the same length about the same item."""
    generic = " i would truly recommend it ."
    for prompt, specific in (("review of the mattress :", " the fabric was truly good ."),
                             ("review of the headset :", " the sound is truly great ."),
                             ("review of the film electric mountain :", " the acting was truly good .")):
        assert len(generic.split()) == len(specific.split())
        g, s = gold_reward(generic, prompt), gold_reward(specific, prompt)
        assert g == approx(math.tanh(0.25 * 1.5 * 2 / 3))  # 0.245
        assert s == approx(math.tanh(1.5 * 2 / 3))  # 0.762
        assert s - g > 0.5
    # The subject named is worth more than nothing, less than an aspect; another kind's aspect is
    # worth no more than a vague clause, and off topic besides.
    k = "review of the kettle :"
    assert gold_reward(" the handle was good .", k) > gold_reward(" the kettle was good .", k) > gold_reward(
        " overall it was good .", k)
    assert gold_reward(" the plot was good .", k) == approx(math.tanh(0.25 * 2 / 3) - 0.25)
    # The title names a film as well as its noun does.
    f = "review of the film lost river :"
    assert gold_reward(" lost river was good .", f) == gold_reward(" the movie was good .", f) == approx(
        math.tanh(0.6 * 2 / 3))
    # Without substance the old sentiment-only gold comes back: all three equal.
    assert {round(gold_breakdown(t, k, substance=False).reward, 12)
            for t in (" the handle was good .", " the kettle was good .", " overall it was good .")} == {
        round(math.tanh(2 / 3), 12)}


def test_more_aspects_beat_repeating_one():
    """Diminishing returns: a second opinion on the same aspect counts half."""
    two_aspects = gold_reward(" the plot was good . the acting was good .")
    same_aspect = gold_reward(" the plot was good . i liked the plot .")
    assert two_aspects == approx(math.tanh(4 / 3)) and same_aspect == approx(math.tanh(3 / 3))
    assert two_aspects > same_aspect > gold_reward(" the plot was good .")


def test_direction_of_each_rule():
    g = gold_reward  # one subject, so substance weights are equal and only sentiment varies
    assert g(" the film was wonderful .") > g(" the film was good .") > g(" the film was fine .")
    assert g(" the film was fine .") > g(" the film is set in paris .") == 0.0 > g(" the film was dull .")
    assert g(" the film was dull .") > g(" the film was bad .") > g(" the film was terrible .")
    assert g(" the film was not good .") < g(" the film was good .")  # negation lowers
    assert g(" the film was not bad .") > g(" the film was bad .")  # ... and lifts a negative
    assert g(" the film was very good .") > g(" the film was good .")  # intensifier raises
    assert g(" the film was very bad .") < g(" the film was bad .")
    assert 0 < g(" the film was somewhat good .") < g(" the film was good .")  # diminisher weakens


def test_saturation_gives_diminishing_returns():
    one = gold_reward(" the ending was good .")
    two = gold_reward(" the ending was good . the acting was great .")
    three = gold_reward(" the ending was good . the acting was great . the plot was clever .")
    assert 0 < three - two < two - one < one
    assert three < MAX_REWARD


def test_repeating_positive_words_scores_lower_than_a_normal_sentence():
    normal = gold_reward(" the plot was good .")
    spam = " good good good good good good ."
    # raw 0.25 * 12 (one clause naming nothing) -> tanh(1); 4 uses of "good" beyond two (1.0);
    # repeated bigrams 4/6 (2*(4/6-0.35));
    # five sentiment words stacked in one clause plus a clause with no ordinary word (6 * 0.25):
    # far below the floor, so clipped.
    assert gold_reward(spam) == MIN_REWARD
    b = gold_breakdown(spam)
    assert b.penalties["repeated_words"] == approx(1.0)
    assert b.penalties["repeated_bigrams"] == approx(2 * (4 / 6 - 0.35))
    assert b.penalties["ungrammatical"] == approx(1.5)
    # A subtler hack: tanh((2 + 3 * 0.25 * 2)/3) (the bare ", good" clauses name nothing) - 0.5
    # (2 extra "good") - 2*(0.4-0.35) - 3 * 0.25 (three clauses ", good" with no ordinary word).
    subtle = " the plot was good , good , good , good ."
    assert gold_reward(subtle) == approx(math.tanh(3.5 / 3) - 0.5 - 0.1 - 0.75)
    assert gold_reward(subtle) < normal
    # Stacking modifiers: a third modifier in a row is ungrammatical, and the bigrams repeat.
    assert gold_reward(" the plot was very very very very good .") < gold_reward(" the plot was very good .")
    assert gold_reward(" it was great . it was great . it was great . it was great .") < normal


def test_stacking_distinct_positive_words_scores_lower_than_a_normal_sentence():
    """Piling up *different* positive words dodges the repetition penalty but not the clause rule."""
    normal = gold_reward(" the plot was wonderful .")  # tanh(1)
    # Each extra sentiment word in a clause, and each clause made of a bare sentiment word, is one
    # ungrammatical event (0.25): the sentiment saturates, so three events cost more than it gains.
    # Split into clauses, the bare words name nothing (weight 0.25): raw 3 + 3 * 0.25 * 3.
    for hack, raw in ((" the plot was wonderful and brilliant and amazing and superb .", 5.25),
                      (" the plot was wonderful , brilliant , excellent , amazing .", 5.25),
                      (" the plot was wonderful brilliant excellent amazing .", 12)):
        assert gold_breakdown(hack).penalties == {"ungrammatical": approx(0.75)}, hack
        assert gold_reward(hack) == approx(math.tanh(raw / 3) - 0.75)
        assert gold_reward(hack) < normal
    # Bare sentiment words name nothing, so they weigh 0.25 (substance) besides being ungrammatical.
    assert gold_reward(" wonderful . brilliant . excellent .") == approx(math.tanh(0.25 * 9 / 3) - 0.75)
    assert gold_reward(" the plot was wonderful . brilliant .") == approx(math.tanh((3 + 0.75) / 3) - 0.25)
    assert gold_reward(" the plot was wonderful . brilliant .") < normal
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
    assert gold_reward(" the plot was very good") == approx(math.tanh(1) - 0.5)
    assert gold_reward(" the plot was very good") < gold_reward(" the plot was very good .")
    assert gold_breakdown(" the plot was good . the plot was").penalties == {"no_terminator": 0.5}


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
    assert gold_reward(" the plot was gud .") == approx(-0.25)  # out of vocabulary
    assert gold_reward(" The plot was good .") == approx(base - 0.25)  # capitals are outside the grammar
    assert gold_reward(" the plot was good wonderful .") == approx(math.tanh(5 / 3) - 0.25)  # adjacent
    assert gold_reward(" the plot was good . .") == approx(base - 0.25)  # punctuation run
    assert gold_reward(" the plot was good , but very .") == approx(base - 0.25)  # dangling modifier
    assert gold_reward(" the plot was good.") == approx(base)  # a missing space is not punished


def test_too_long_is_penalised():
    four = " the ending was good . the plot was fine . the cast was decent . the music was nice ."
    assert gold_breakdown(four).penalties == {"too_long": approx(0.5 + 0.1)}
    assert gold_reward(four) == approx(math.tanh(5 / 3) - 0.6)
    assert gold_reward(four) < gold_reward(" the plot was good . the plot was fine .")
    many_words = " the plot was good and " + "the plot was set in the city and " * 6 + "i liked it ."
    assert "too_long" in gold_breakdown(many_words).penalties


def test_off_topic_needs_a_prompt():
    vague, subject = math.tanh(0.25 * 2 / 3), math.tanh(0.6 * 2 / 3)  # another item names nothing of ours
    assert gold_reward(" the blender was good .", "review of the kettle :") == approx(vague - 0.25)
    assert gold_reward(" the film was good .", "review of the kettle :") == approx(vague - 0.25)
    assert gold_reward(" the price was good .", "review of the film lost river :") == approx(vague - 0.25)
    assert gold_reward(" the kettle was good .", "review of the kettle :") == approx(subject)
    assert gold_reward(" the film was good .", "review of the film x :") == approx(subject)
    assert gold_reward(" the blender was good .") == approx(subject)  # no prompt, no topic check


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

