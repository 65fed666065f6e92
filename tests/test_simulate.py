"""Simulated labelers: noise level, length bias, ties, determinism and the closed-form ceiling."""

import math

import numpy as np
import pytest

from rlhfkit.feedback.simulate import (
    SimulatedLabeler,
    bayes_accuracy,
    best_of_n_kl,
    labeler_prob_a,
    make_preference_pairs,
)


def fake_gold(prompts, completions):
    """Gold reward = the number the completion starts with (its length is the rest of the words)."""
    assert len(prompts) == len(completions)
    return [float(c.split()[0]) for c in completions]


def text(gold, n_words=3):
    return " ".join([f"{gold:.9f}"] + ["w"] * (n_words - 1))


def random_pairs(n, seed, lengths=False):
    rng = np.random.default_rng(seed)
    ga, gb = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    la = rng.integers(1, 21, n) if lengths else np.full(n, 3)
    lb = rng.integers(1, 21, n) if lengths else np.full(n, 3)
    a = [text(g, k) for g, k in zip(ga, la)]
    b = [text(g, k) for g, k in zip(gb, lb)]
    # the text rounds the gold to 9 decimals: use what fake_gold will read back
    ga = np.array([float(x.split()[0]) for x in a])
    gb = np.array([float(x.split()[0]) for x in b])
    return ["p"] * n, a, b, ga, gb, la - lb


def agreement(rows):
    return np.mean([r["gold_chosen"] > r["gold_rejected"] for r in rows])


def test_zero_temperature_always_picks_higher_gold():
    prompts, a, b, ga, gb, _ = random_pairs(2000, 0)
    for t in (0.0, 1e-9):
        rows = SimulatedLabeler(temperature=t, seed=1).label(prompts, a, b, fake_gold)
        assert all(r["gold_chosen"] > r["gold_rejected"] for r in rows)
        assert all(r["p_chosen"] == pytest.approx(1.0) for r in rows)
    assert bayes_accuracy(ga, gb, 0.0) == 1.0


def test_huge_temperature_is_a_coin_flip():
    prompts, a, b, ga, gb, _ = random_pairs(20000, 1)
    rows = SimulatedLabeler(temperature=1e6, seed=2).label(prompts, a, b, fake_gold)
    assert agreement(rows) == pytest.approx(0.5, abs=0.02)
    assert bayes_accuracy(ga, gb, 1e6) == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("temperature,length_bias", [(0.3, 0.0), (0.1, 0.0), (0.5, 0.1)])
def test_empirical_agreement_matches_bayes_accuracy(temperature, length_bias):
    prompts, a, b, ga, gb, ld = random_pairs(20000, 3, lengths=True)
    lab = SimulatedLabeler(temperature=temperature, length_bias=length_bias, seed=4)
    rows = lab.label(prompts, a, b, fake_gold)
    expected = bayes_accuracy(ga, gb, temperature, length_diff=ld, length_bias=length_bias)
    assert agreement(rows) == pytest.approx(expected, abs=0.02)
    assert 0.5 < expected < 1.0
    # p_chosen is the labeler's probability for its pick: its mean predicts the agreement with its
    # own choices, i.e. the labels-Bayes accuracy's E[p of the picked side] = E[p^2 + (1-p)^2]
    p = labeler_prob_a(ga, gb, temperature, ld, length_bias)
    assert np.mean([r["p_chosen"] for r in rows]) == pytest.approx(np.mean(p ** 2 + (1 - p) ** 2), abs=0.02)


def test_length_biased_labeler_prefers_longer_answers():
    prompts, a, b, ga, gb, ld = random_pairs(20000, 5, lengths=True)
    keep = ld != 0
    gold_longer_better = np.mean((ga > gb)[keep] == (ld > 0)[keep])  # about 0.5: length is not gold
    n_words = {s: len(s.split()) for s in a + b}

    def longer_chosen_rate(rows):
        return np.mean([n_words[r["chosen"]] > n_words[r["rejected"]] for r, k in zip(rows, keep) if k])

    fair = SimulatedLabeler(temperature=0.3, seed=6).label(prompts, a, b, fake_gold)
    biased = SimulatedLabeler(temperature=0.3, length_bias=0.2, seed=6).label(prompts, a, b, fake_gold)
    assert longer_chosen_rate(fair) == pytest.approx(gold_longer_better, abs=0.02)
    assert longer_chosen_rate(biased) > gold_longer_better + 0.1
    # and the bias costs agreement with gold
    assert agreement(biased) < agreement(fair) - 0.02


def test_ties_only_within_margin():
    prompts, a, b, ga, gb, _ = random_pairs(5000, 7)
    rows = SimulatedLabeler(temperature=0.3, tie_margin=0.1, seed=8).label(prompts, a, b, fake_gold)
    gaps = np.array([abs(r["gold_chosen"] - r["gold_rejected"]) for r in rows])
    ties = np.array([r["tie"] for r in rows])
    assert ties.any() and not ties.all()
    assert (gaps[ties] < 0.1).all()
    assert (gaps[~ties] >= 0.1).all()
    # no tie margin: no ties, even for equal gold
    eq = SimulatedLabeler(temperature=0.3, seed=8).label(["p"], [text(0.5, 2)], [text(0.5, 4)], fake_gold)
    assert eq[0]["tie"] is False and eq[0]["p_chosen"] == pytest.approx(0.5)
    # the choices do not depend on tie_margin, only the flag does
    no_ties = SimulatedLabeler(temperature=0.3, tie_margin=0.0, seed=8).label(prompts, a, b, fake_gold)
    assert [r["chosen"] for r in no_ties] == [r["chosen"] for r in rows]


def test_label_rows_and_determinism():
    prompts, a, b, *_ = random_pairs(300, 9)
    r1 = SimulatedLabeler(temperature=0.5, seed=10).label(prompts, a, b, fake_gold)
    r2 = SimulatedLabeler(temperature=0.5, seed=10).label(prompts, a, b, fake_gold)
    r3 = SimulatedLabeler(temperature=0.5, seed=11).label(prompts, a, b, fake_gold)
    assert r1 == r2
    assert r1 != r3
    assert set(r1[0]) == {"prompt", "chosen", "rejected", "p_chosen", "tie", "gold_chosen", "gold_rejected"}
    for row, x, y in zip(r1, a, b):
        assert {row["chosen"], row["rejected"]} == {x, y}
        assert row["gold_chosen"] == fake_gold([""], [row["chosen"]])[0]
        d = row["gold_chosen"] - row["gold_rejected"]
        assert row["p_chosen"] == pytest.approx(1 / (1 + math.exp(-d / 0.5)))
    # the generator advances across calls; a fresh labeler with the seed replays the sequence
    lab, fresh = SimulatedLabeler(temperature=0.5, seed=10), SimulatedLabeler(temperature=0.5, seed=10)
    first, second = lab.label(prompts, a, b, fake_gold), lab.label(prompts, a, b, fake_gold)
    assert first == r1 and second != first
    assert fresh.label(prompts, a, b, fake_gold) == first and fresh.label(prompts, a, b, fake_gold) == second


def test_label_validates_inputs():
    lab = SimulatedLabeler(temperature=1.0)
    assert lab.label([], [], [], fake_gold) == []
    with pytest.raises(ValueError):
        lab.label(["p"], ["1 a"], [], fake_gold)
    with pytest.raises(ValueError):
        lab.label(["p"], ["1 a"], ["2 b"], lambda p, c: [0.0])
    with pytest.raises(ValueError):
        SimulatedLabeler(temperature=-1.0)


def test_bayes_accuracy_by_hand():
    # two pairs, T = 0.5: gaps 1.0 and 0.5 -> sigmoid(2) and sigmoid(1)
    acc = bayes_accuracy([1.0, 0.2], [0.0, 0.7], temperature=0.5)
    assert acc == pytest.approx((1 / (1 + math.exp(-2.0)) + 1 / (1 + math.exp(-1.0))) / 2)
    # equal gold counts 0.5
    assert bayes_accuracy([1.0, 0.3], [0.0, 0.3], 1.0) == pytest.approx((1 / (1 + math.exp(-1.0)) + 0.5) / 2)
    # length bias, T = 1, bias 0.25: pair 1 A better and longer by 2 -> p_A = sigmoid(1 + 0.5);
    # pair 2 B better by 1 but A longer by 6 -> p_A = sigmoid(-1 + 1.5), agreement = 1 - p_A
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    acc_gold = bayes_accuracy([1.0, 0.0], [0.0, 1.0], 1.0, length_diff=[2, 6], length_bias=0.25)
    assert acc_gold == pytest.approx((sig(1.5) + 1 - sig(0.5)) / 2)
    # predicting this labeler's labels, the best one can do is max(p, 1 - p) per pair
    acc_lab = bayes_accuracy([1.0, 0.0], [0.0, 1.0], 1.0, length_diff=[2, 6], length_bias=0.25,
                             against="labels")
    assert acc_lab == pytest.approx((sig(1.5) + sig(0.5)) / 2)
    # unbiased: both readings agree
    assert bayes_accuracy([1.0, 0.2], [0.0, 0.7], 0.5, against="labels") == pytest.approx(acc)


def test_make_preference_pairs():
    prompts = ["p0", "p1", "p2", "p3"]
    samples = [[text(0.1), text(0.2), text(0.3), text(0.1)],  # 3 distinct -> 3 pairs at most
               [text(0.5), text(0.5)],  # one distinct response: no pair
               [text(0.9), text(-0.9)],  # exactly one pair
               [text(x / 10) for x in range(6)]]  # 15 possible pairs
    lab = SimulatedLabeler(temperature=0.2, seed=0)
    rows = make_preference_pairs(prompts, samples, lab, fake_gold, rng_seed=1, pairs_per_prompt=4)
    by_prompt = {p: [r for r in rows if r["prompt"] == p] for p in prompts}
    assert [len(by_prompt[p]) for p in prompts] == [3, 0, 1, 4]
    assert [r["prompt"] for r in rows] == ["p0"] * 3 + ["p2"] + ["p3"] * 4  # prompt by prompt
    for p, samp in zip(prompts, samples):
        pairs = [frozenset((r["chosen"], r["rejected"])) for r in by_prompt[p]]
        assert len(set(pairs)) == len(pairs)  # no pair twice
        for r in by_prompt[p]:
            assert r["chosen"] != r["rejected"] and r["chosen"] in samp and r["rejected"] in samp
    again = make_preference_pairs(prompts, samples, SimulatedLabeler(temperature=0.2, seed=0), fake_gold,
                                  rng_seed=1, pairs_per_prompt=4)
    assert again == rows
    one = make_preference_pairs(prompts, samples, SimulatedLabeler(temperature=0.2), fake_gold, rng_seed=1)
    assert len(one) == 3
    # every unordered pair of 3 distinct responses is reachable (each in both chosen/rejected orders)
    seen = set()
    for s in range(200):
        for r in make_preference_pairs(["p"], [samples[0][:3]], SimulatedLabeler(temperature=1e6, seed=s),
                                       fake_gold, rng_seed=s):
            seen.add((r["chosen"], r["rejected"]))
    assert len(seen) == 6


def test_best_of_n_kl():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 3 / 4)
    assert best_of_n_kl(2) < best_of_n_kl(4) < best_of_n_kl(16) < math.log(16)
    with pytest.raises(ValueError):
        best_of_n_kl(0)


def test_with_the_synthetic_gold_reward():
    from rlhfkit.synthetic.gold import gold_reward_fn

    good, bad = "the film was very good .", "the film was bad ."
    rows = SimulatedLabeler(temperature=0.0, seed=0).label(["review :"] * 2, [good, bad], [bad, good],
                                                           gold_reward_fn)
    assert [r["chosen"] for r in rows] == [good, good]
