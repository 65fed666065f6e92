"""Agreement statistics against values worked out by hand (and two published textbook examples)."""

import math

import numpy as np
import pytest

from rlhfkit.feedback.agreement import (
    AnnotatorAgreement,
    cohens_kappa,
    cohens_kappa_by_pair,
    coincidence_matrix,
    fleiss_kappa,
    krippendorff_alpha,
    majority_vote,
    majority_vote_uplift,
    mean_pairwise_cohens_kappa,
    pairwise_agreement,
    per_annotator_agreement,
    pivot,
)


def records_from(items: dict) -> list:
    """``{item: {annotator: label}}`` -> judgement records."""
    return [(item, ann, lab) for item, row in items.items() for ann, lab in row.items()]


def records_from_columns(columns: dict) -> list:
    """``{annotator: [label per item, None = missing]}`` -> records, items numbered from 0."""
    return [(u, ann, lab) for ann, col in columns.items() for u, lab in enumerate(col) if lab is not None]


def two_coders(a: list, b: list) -> list:
    return records_from_columns({"a": a, "b": b})


# ----------------------------------------------------------------------------- input handling


def test_pivot_items_by_annotators_with_missing():
    recs = [("i1", "x", "A"), ("i1", "y", "B"), ("i2", "y", "A"), ("i3", "z", "tie")]
    t = pivot(recs)
    assert t.items == ["i1", "i2", "i3"]
    assert t.annotators == ["x", "y", "z"]
    assert t.matrix.shape == (3, 3)
    assert t.matrix.tolist() == [["A", "B", None], [None, "A", None], [None, None, "tie"]]
    assert t.column("y") == ["B", "A", None]


def test_none_label_is_missing():
    recs = [("i1", "x", "A"), ("i1", "y", None), ("i1", "z", "A")]
    assert pivot(recs).annotators == ["x", "z"]


@pytest.mark.parametrize("fn", [pivot, pairwise_agreement, fleiss_kappa, krippendorff_alpha,
                                majority_vote, majority_vote_uplift, per_annotator_agreement,
                                mean_pairwise_cohens_kappa])
def test_empty_input_is_a_clear_value_error(fn):
    with pytest.raises(ValueError, match="no judgement records"):
        fn([])


def test_bad_records_raise():
    with pytest.raises(ValueError, match="more than once"):
        pivot([("i1", "x", "A"), ("i1", "x", "B")])
    with pytest.raises(ValueError, match="item_id, annotator_id, label"):
        pivot([("i1", "x")])
    with pytest.raises(ValueError, match="missing"):
        pivot([("i1", "x", None)])


@pytest.mark.parametrize("fn", [pairwise_agreement, fleiss_kappa, krippendorff_alpha])
def test_nothing_pairable_raises(fn):
    with pytest.raises(ValueError, match="two or more annotators"):
        fn([("i1", "x", "A"), ("i2", "y", "B")])


def test_cohens_kappa_input_errors():
    with pytest.raises(ValueError, match="labels_b has 1"):
        cohens_kappa(["A", "B"], ["A"])
    with pytest.raises(ValueError, match="at least one item"):
        cohens_kappa(["A", None], [None, "B"])
    with pytest.raises(ValueError, match="at least one item"):
        cohens_kappa([], [])


# ----------------------------------------------------------------------------- raw agreement


def test_pairwise_agreement_by_hand():
    recs = records_from({
        "i1": {"x": "A", "y": "A", "z": "B"},             # 3 pairs, 1 agrees
        "i2": {"x": "A", "y": "B"},                       # 1 pair, 0 agree
        "i3": {"w": "B", "x": "B", "y": "B", "z": "B"},   # 6 pairs, 6 agree
        "i4": {"x": "A"},                                 # no pair: ignored
    })
    assert pairwise_agreement(recs) == pytest.approx((1 + 0 + 6) / (3 + 1 + 6))  # 0.7
    assert pairwise_agreement(recs, per="item") == pytest.approx((1 / 3 + 0 + 1) / 3)  # 4/9
    with pytest.raises(ValueError, match="per must be"):
        pairwise_agreement(recs, per="annotator")


def test_pairwise_agreement_two_coders_is_share_of_items_agreed():
    recs = two_coders(["A", "A", "B", "B"], ["A", "B", "B", "B"])
    assert pairwise_agreement(recs) == pytest.approx(0.75)


# ----------------------------------------------------------------------------- Cohen's kappa


def test_cohens_kappa_2x2_by_hand():
    # 50 items:       B yes  B no
    #        A yes      20     5
    #        A no       10    15
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    p_o = (20 + 15) / 50                       # 0.7
    p_yes_a, p_yes_b = 25 / 50, 30 / 50        # 0.5, 0.6
    p_e = p_yes_a * p_yes_b + (1 - p_yes_a) * (1 - p_yes_b)  # 0.3 + 0.2 = 0.5
    expected = (p_o - p_e) / (1 - p_e)         # 0.4
    assert expected == pytest.approx(0.4)
    assert cohens_kappa(a, b) == pytest.approx(expected)
    assert cohens_kappa(b, a) == pytest.approx(expected)  # symmetric


def test_cohens_kappa_drops_missing_positions():
    a = ["A", "A", "B", "B", None, "A"]
    b = ["A", "B", "B", "B", "A", None]
    # left: A/A, A/B, B/B, B/B -> p_o = 3/4, p_e = (2*1 + 2*3)/16 = 1/2 -> kappa = 1/2
    assert cohens_kappa(a, b) == pytest.approx(0.5)


def test_cohens_kappa_edge_cases():
    assert cohens_kappa(["A", "B", "tie"], ["A", "B", "tie"]) == pytest.approx(1.0)
    # always-opposite on a balanced A/B: p_o = 0, p_e = 1/2 -> -1
    assert cohens_kappa(["A", "B", "A", "B"], ["B", "A", "B", "A"]) == pytest.approx(-1.0)
    # both always say "A": p_e = 1, kappa is 0/0 -> nan (documented), raw agreement still 1
    assert math.isnan(cohens_kappa(["A"] * 5, ["A"] * 5))


def test_mean_pairwise_cohens_kappa_respects_min_shared():
    recs = records_from({
        "i1": {"x": "A", "y": "A", "z": "A"},
        "i2": {"x": "A", "y": "B"},
        "i3": {"x": "B", "y": "B", "z": "B"},
        "i4": {"x": "B", "y": "B"},
    })
    # (x, y) over 4 items: A/A A/B B/B B/B -> kappa 1/2 (see above); (x, z), (y, z) over i1, i3: 1
    by_pair = cohens_kappa_by_pair(recs, min_shared=2)
    assert set(by_pair) == {("x", "y"), ("x", "z"), ("y", "z")}
    assert by_pair[("x", "y")] == (pytest.approx(0.5), 4)
    assert by_pair[("x", "z")] == (pytest.approx(1.0), 2)
    assert mean_pairwise_cohens_kappa(recs, min_shared=2) == pytest.approx((0.5 + 1 + 1) / 3)
    assert mean_pairwise_cohens_kappa(recs, min_shared=3) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=">= 5 items"):
        mean_pairwise_cohens_kappa(recs, min_shared=5)
    with pytest.raises(ValueError, match="min_shared"):
        cohens_kappa_by_pair(recs, min_shared=0)


def test_mean_pairwise_cohens_kappa_skips_undefined_pairs():
    recs = records_from({"i1": {"x": "A", "y": "A", "z": "A"}, "i2": {"x": "A", "y": "A", "z": "B"}})
    # (x, y): both always A -> nan, skipped; (x, z), (y, z): p_o = 1/2, p_e = 1/2 -> 0
    assert mean_pairwise_cohens_kappa(recs, min_shared=2) == pytest.approx(0.0)
    same = records_from({"i1": {"x": "A", "y": "A"}, "i2": {"x": "A", "y": "A"}})
    assert math.isnan(mean_pairwise_cohens_kappa(same, min_shared=1))


# ----------------------------------------------------------------------------- Fleiss' kappa

# The classic example (Fleiss 1971 style; Wikipedia "Fleiss' kappa"): 10 subjects, 14 raters each,
# 5 categories; row i = how many of the 14 raters put subject i in each category.
FLEISS_TABLE = np.array([
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
])


def counts_to_records(table: np.ndarray) -> list:
    recs = []
    for i, row in enumerate(table):
        rater = 0
        for cat, count in enumerate(row):
            for _ in range(count):
                recs.append((i, rater, cat + 1))
                rater += 1
    return recs


def test_fleiss_kappa_classic_example():
    n = 14
    recs = counts_to_records(FLEISS_TABLE)
    # by the formula: P_i = (sum_j n_ij^2 - n) / (n (n - 1)), p_j = column share, P_e = sum p_j^2
    p_i = ((FLEISS_TABLE ** 2).sum(axis=1) - n) / (n * (n - 1))
    p_bar = p_i.mean()
    p_j = FLEISS_TABLE.sum(axis=0) / FLEISS_TABLE.sum()
    p_e = (p_j ** 2).sum()
    assert p_bar == pytest.approx(0.378, abs=5e-4)
    assert p_e == pytest.approx(0.213, abs=5e-4)
    expected = (p_bar - p_e) / (1 - p_e)
    assert fleiss_kappa(recs) == pytest.approx(expected)
    assert fleiss_kappa(recs) == pytest.approx(0.210, abs=5e-4)  # published value
    # Fleiss' P-bar is raw agreement averaged per item
    assert pairwise_agreement(recs, per="item") == pytest.approx(p_bar)


def test_fleiss_kappa_varying_number_of_raters_by_hand():
    recs = records_from({
        "i1": {"a": "A", "b": "A", "c": "A"},   # P_1 = 1
        "i2": {"a": "A", "d": "B"},             # P_2 = 0
        "i3": {"b": "B", "c": "B"},             # P_3 = 1
        "i4": {"a": "A"},                       # n = 1: dropped
    })
    p_bar = 2 / 3
    p_e = (4 / 7) ** 2 + (3 / 7) ** 2          # 4 A and 3 B among the 7 pairable ratings
    assert fleiss_kappa(recs) == pytest.approx((p_bar - p_e) / (1 - p_e))
    assert fleiss_kappa(recs) == pytest.approx(23 / 72)


def test_fleiss_kappa_edge_cases():
    perfect = records_from({"i1": {"a": "A", "b": "A"}, "i2": {"a": "B", "b": "B", "c": "B"}})
    assert fleiss_kappa(perfect) == pytest.approx(1.0)
    one_label = records_from({"i1": {"a": "A", "b": "A"}, "i2": {"a": "A", "b": "A"}})
    assert math.isnan(fleiss_kappa(one_label))
    assert pairwise_agreement(one_label) == 1.0


# ----------------------------------------------------------------------------- Krippendorff's alpha

N = None
# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 observers x 12 units,
# missing data; unit 12 has a single value and is not pairable.
KRIPP = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    "C": [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
}


def test_krippendorff_textbook_example():
    recs = records_from_columns(KRIPP)
    values, o = coincidence_matrix(recs)
    assert values == [1, 2, 3, 4, 5]
    # by hand: e.g. unit 1 (three 1s, m=3) adds 3 * 2 ordered pairs * 1/2 = 3 to o[1,1]; unit 6
    # (1, 2, 3, 4, m=4) adds 1/3 to every off-diagonal cell among 1..4.
    expected_o = np.array([
        [7, 4 / 3, 1 / 3, 1 / 3, 0],
        [4 / 3, 10, 4 / 3, 1 / 3, 0],
        [1 / 3, 4 / 3, 8, 1 / 3, 0],
        [1 / 3, 1 / 3, 1 / 3, 4, 0],
        [0, 0, 0, 0, 3],
    ])
    np.testing.assert_allclose(o, expected_o)
    n_c = np.array([9, 13, 10, 5, 3])
    np.testing.assert_allclose(o.sum(axis=1), n_c)
    n = 40
    # nominal: alpha = 1 - (n - 1) (n - sum o_cc) / (n^2 - sum n_c^2) = 1 - 39 * 8 / 1216
    alpha_nominal = 1 - (n - 1) * (n - 32) / (n ** 2 - (n_c ** 2).sum())
    assert krippendorff_alpha(recs, "nominal") == pytest.approx(alpha_nominal)
    assert krippendorff_alpha(recs, "nominal") == pytest.approx(0.743, abs=5e-4)  # published
    assert krippendorff_alpha(recs, "ordinal") == pytest.approx(0.815, abs=5e-4)  # published
    assert krippendorff_alpha(recs, "interval") == pytest.approx(0.849, abs=5e-4)  # published


def test_krippendorff_nominal_small_by_hand():
    recs = two_coders(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    # o_aa = 2, o_ab = o_ba = 1, o_bb = 4; n_a = 3, n_b = 5, n = 8
    # alpha = 1 - (n-1) (o_ab + o_ba) / (n_a n_b + n_b n_a) = 1 - 7 * 2 / 30 = 8/15
    assert krippendorff_alpha(recs) == pytest.approx(8 / 15)


def test_krippendorff_perfect_and_systematic_disagreement():
    assert krippendorff_alpha(two_coders(["a", "b", "a", "c"], ["a", "b", "a", "c"])) == pytest.approx(1.0)
    # always opposite: o_ab = o_ba = 4, n_a = n_b = 4, n = 8 -> 1 - 7 * 8 / 32 = -0.75
    alpha = krippendorff_alpha(two_coders(["a", "b", "a", "b"], ["b", "a", "b", "a"]))
    assert alpha == pytest.approx(-0.75)
    assert alpha < 0
    assert math.isnan(krippendorff_alpha(two_coders(["a", "a"], ["a", "a"])))


def test_krippendorff_ignores_single_rated_units_and_handles_many_raters():
    base = two_coders(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert krippendorff_alpha(base + [(99, "a", "b"), (100, "c", "a")]) == pytest.approx(8 / 15)


def test_krippendorff_ordinal_beats_nominal_when_disagreements_are_adjacent():
    # strength 1-4, two coders; the two disagreements are 1 vs 2 and 3 vs 4 (adjacent ranks)
    recs = two_coders([1, 1, 2, 3, 3, 4], [1, 2, 2, 3, 4, 4])
    # coincidences: o11 = o22 = o33 = o44 = 2, o12 = o21 = o34 = o43 = 1; n_c = 3 each, n = 12
    # nominal: 1 - 11 * 4 / (144 - 36) = 16/27
    assert krippendorff_alpha(recs, "nominal") == pytest.approx(1 - 11 * 4 / 108)
    # ordinal: delta(c, k) = sum_{g=c..k} n_g - (n_c + n_k)/2 = 3 |c - k| here, so delta^2 = 9 (c-k)^2
    # observed sum o delta^2 = 4 * 9 = 36; expected sum n_c n_k delta^2 = 9 * 9 * 2 * (3*1 + 2*4 + 1*9)
    ordinal = 1 - 11 * 36 / (81 * 2 * 20)
    assert krippendorff_alpha(recs, "ordinal") == pytest.approx(ordinal)  # 0.8778
    assert krippendorff_alpha(recs, "ordinal") > krippendorff_alpha(recs, "nominal") + 0.2
    # with equal marginals the ordinal ranks are equidistant, so interval gives the same here
    assert krippendorff_alpha(recs, "interval") == pytest.approx(ordinal)


def test_krippendorff_ordinal_penalises_far_disagreements_more_than_nominal():
    recs = two_coders([1, 1, 2, 3, 4, 4], [1, 4, 2, 3, 1, 4])  # two 1-vs-4 disagreements
    assert krippendorff_alpha(recs, "ordinal") < krippendorff_alpha(recs, "nominal")


def test_krippendorff_ordinal_order_for_string_labels():
    words = two_coders(["weak", "weak", "mid", "strong"], ["weak", "mid", "mid", "strong"])
    nums = two_coders([1, 1, 2, 3], [1, 2, 2, 3])
    order = ["weak", "mid", "strong"]
    assert krippendorff_alpha(words, "ordinal", order=order) == pytest.approx(
        krippendorff_alpha(nums, "ordinal"))
    with pytest.raises(ValueError, match="not in order"):
        krippendorff_alpha(words, "ordinal", order=["weak", "mid"])
    with pytest.raises(ValueError, match="numeric"):
        krippendorff_alpha(words, "interval")
    with pytest.raises(ValueError, match="level must be"):
        krippendorff_alpha(nums, "ratio")


# ----------------------------------------------------------------------------- majority vote


def test_majority_vote_and_ties():
    recs = records_from({
        "i1": {"x": "A", "y": "A", "z": "B"},
        "i2": {"x": "B", "y": "A"},
        "i3": {"x": "B"},
    })
    assert majority_vote(recs) == {"i1": "A", "i2": None, "i3": "B"}
    assert majority_vote(recs, ties="lowest") == {"i1": "A", "i2": "A", "i3": "B"}
    with pytest.raises(ValueError, match="ties must be"):
        majority_vote(recs, ties="random")


def test_majority_vote_uplift_with_gold_by_hand():
    recs = records_from({
        "i1": {"x": "A", "y": "A", "z": "B"},   # gold A: single 2/3, majority right (1)
        "i2": {"x": "A", "y": "B"},             # gold B: single 1/2, tied vote scores 1/2
        "i3": {"x": "B", "y": "B", "z": "A"},   # gold B: single 2/3, majority right (1)
        "i4": {"x": "A", "y": "A"},             # no gold: left out
    })
    res = majority_vote_uplift(recs, gold={"i1": "A", "i2": "B", "i3": "B", "i9": "A"})
    assert res.mode == "gold"
    assert res.n_items == 3
    assert res.majority_accuracy == pytest.approx((1 + 0.5 + 1) / 3)              # 5/6
    assert res.single_accuracy == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)      # 11/18
    assert res.uplift == pytest.approx(5 / 6 - 11 / 18)                           # 2/9
    with pytest.raises(ValueError, match="gold"):
        majority_vote_uplift(recs, gold={"nope": "A"})


def test_majority_vote_uplift_leave_one_out_by_hand():
    recs = records_from({
        "i1": {"w": "A", "x": "A", "y": "A", "z": "B"},
        "i2": {"x": "A", "y": "A", "z": "B"},
        "i3": {"x": "A", "y": "B"},  # m = 2: left out
    })
    # i1: each A held out -> others A,A,B: majority right (1), one other right 2/3 of the time;
    #     B held out -> others A,A,A: 0 and 0. majority 3/4, single (3 * 2/3) / 4 = 1/2.
    # i2: A held out -> others A,B tied: 1/2, single 1/2; B held out -> 0, 0. both 1/3.
    res = majority_vote_uplift(recs)
    assert res.mode == "leave_one_out"
    assert res.n_items == 2
    assert res.majority_accuracy == pytest.approx((3 / 4 + 1 / 3) / 2)
    assert res.single_accuracy == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert res.uplift == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match=">= 3 judgements"):
        majority_vote_uplift(records_from({"i1": {"x": "A", "y": "B"}}))


def test_per_annotator_agreement_leave_one_out_by_hand():
    recs = records_from({
        "i1": {"x": "A", "y": "A", "z": "B"},
        "i2": {"x": "A", "y": "B"},
        "i3": {"x": "B", "y": "B", "z": "B"},
        "i4": {"x": "A", "y": "A", "z": "B"},
        "i5": {"z": "A"},   # alone: does not count for z
        "i6": {"loner": "A"},
    })
    # x: i1 others (A, B) tied -> 1/2; i2 others (B) -> 0; i3 -> 1; i4 tied -> 1/2  => 2/4
    # y: same by symmetry with x                                                     => 2/4
    # z: i1 others (A, A) -> 0; i3 -> 1; i4 -> 0                                     => 1/3
    out = per_annotator_agreement(recs)
    assert set(out) == {"x", "y", "z", "loner"}
    assert out["x"] == AnnotatorAgreement(agreement=pytest.approx(0.5), n_items=4)
    assert out["y"] == AnnotatorAgreement(agreement=pytest.approx(0.5), n_items=4)
    assert out["z"] == AnnotatorAgreement(agreement=pytest.approx(1 / 3), n_items=3)
    assert out["loner"].n_items == 0 and math.isnan(out["loner"].agreement)


def test_identical_annotators_everything_is_one():
    recs = records_from({f"i{k}": {"x": lab, "y": lab, "z": lab} for k, lab in enumerate("ABAB")})
    assert pairwise_agreement(recs) == 1.0
    assert fleiss_kappa(recs) == pytest.approx(1.0)
    assert krippendorff_alpha(recs) == pytest.approx(1.0)
    assert mean_pairwise_cohens_kappa(recs, min_shared=4) == pytest.approx(1.0)
    assert all(v.agreement == 1.0 for v in per_annotator_agreement(recs).values())
    res = majority_vote_uplift(recs)
    assert (res.majority_accuracy, res.single_accuracy, res.uplift) == (1.0, 1.0, 0.0)
