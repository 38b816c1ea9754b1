"""CMC (image- and identity-level), mAP and mINP against hand-computed values and a slow reference."""

import numpy as np
import pytest

from jsia_tf.eval import metrics

# Gallery columns 0..4 hold persons 1, 1, 2, 2, 3.
GALLERY_LABELS = np.array([1, 1, 2, 2, 3])


def similarity_from_orders(orders, num_gallery):
    """[Q, G] similarities that rank the gallery of query q as orders[q] (best first)."""
    similarity = np.zeros((len(orders), num_gallery))
    for q, order in enumerate(orders):
        similarity[q, order] = 1.0 - 0.1 * np.arange(len(order))
    return similarity


# Query (person) : ranking (columns) -> ranked persons.
#   q0 (1): 2 0 4 1 3 -> 2 1 3 1 2  first hit at 2; wrong ids before it {2}      -> id rank 2
#           AP = (1/2 + 2/4) / 2 = 0.5        INP = 2 positives / last at 4 = 0.5
#   q1 (1): 2 3 4 0 1 -> 2 2 3 1 1  first hit at 4; wrong ids before it {2, 3}   -> id rank 3
#           AP = (1/4 + 2/5) / 2 = 0.325      INP = 2 / 5 = 0.4
#   q2 (7): no image of person 7: skipped
#   q3 (3): 4 0 1 2 3 -> 3 1 1 2 2  first hit at 1 -> id rank 1; AP = 1, INP = 1 / 1 = 1
HAND_ORDERS = [[2, 0, 4, 1, 3], [2, 3, 4, 0, 1], [0, 1, 2, 3, 4], [4, 0, 1, 2, 3]]
HAND_QUERY_LABELS = np.array([1, 1, 7, 3])


def test_hand_computed_image_level():
    scores = metrics.score_similarity(similarity_from_orders(HAND_ORDERS, 5), HAND_QUERY_LABELS, GALLERY_LABELS)
    np.testing.assert_array_equal(scores.rank, [2, 4, 0, 1])
    np.testing.assert_allclose(scores.ap, [0.5, 0.325, 0.0, 1.0])
    np.testing.assert_allclose(scores.inp, [0.5, 0.4, 0.0, 1.0])
    np.testing.assert_array_equal(scores.has_positive, [True, True, False, True])

    summary = metrics.summarize(scores, ranks=(1, 2, 3, 4))
    # Three scored queries with ranks 2, 4, 1.
    assert summary["cmc"] == pytest.approx({"1": 1 / 3, "2": 2 / 3, "3": 2 / 3, "4": 1.0})
    assert summary["mAP"] == pytest.approx((0.5 + 0.325 + 1.0) / 3)
    assert summary["mINP"] == pytest.approx((0.5 + 0.4 + 1.0) / 3)


def test_hand_computed_identity_level():
    scores = metrics.score_similarity(
        similarity_from_orders(HAND_ORDERS, 5), HAND_QUERY_LABELS, GALLERY_LABELS, identity_level=True)
    np.testing.assert_array_equal(scores.rank, [2, 3, 0, 1])
    # AP and INP do not depend on the CMC flavour.
    np.testing.assert_allclose(scores.ap, [0.5, 0.325, 0.0, 1.0])
    np.testing.assert_allclose(scores.inp, [0.5, 0.4, 0.0, 1.0])
    assert metrics.summarize(scores, ranks=(1, 2, 3))["cmc"] == pytest.approx({"1": 1 / 3, "2": 2 / 3, "3": 1.0})


def test_validity_mask_removes_images_from_the_ranking():
    # q1 without columns 2, 3 (both person 2): ranking 4 0 1 -> persons 3 1 1.
    # Image and identity rank 2; AP = (1/2 + 2/3) / 2; INP = 2 / 3.
    # q0 without its positives 0, 1: no valid positive, skipped.
    valid = np.ones((2, 5), dtype=bool)
    valid[0, [0, 1]] = False
    valid[1, [2, 3]] = False
    similarity = similarity_from_orders(HAND_ORDERS[:2], 5)
    for identity_level in (False, True):
        scores = metrics.score_similarity(similarity, [1, 1], GALLERY_LABELS, valid, identity_level)
        np.testing.assert_array_equal(scores.rank, [0, 2])
        np.testing.assert_allclose(scores.ap, [0.0, (1 / 2 + 2 / 3) / 2])
        np.testing.assert_allclose(scores.inp, [0.0, 2 / 3])


def test_ties_keep_gallery_order():
    # Equal similarities: the ranking is the gallery order, so 2 1 1 puts the first hit second
    # (AP = (1/2 + 2/3) / 2) and 1 1 2 first (AP = 1).
    tied = np.zeros((1, 3))
    scores = metrics.score_similarity(tied, [1], np.array([2, 1, 1]))
    assert scores.rank.tolist() == [2] and scores.ap[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    scores = metrics.score_similarity(tied, [1], np.array([1, 1, 2]))
    assert scores.rank.tolist() == [1] and scores.ap[0] == pytest.approx(1.0)
    # Ties among other, distinct values: 0.5 0.9 0.5 0.5 ranks columns 1 0 2 3 -> persons 3 2 1 1.
    scores = metrics.score_similarity(
        np.array([[0.5, 0.9, 0.5, 0.5]]), [1], np.array([2, 3, 1, 1]), identity_level=True)
    assert scores.rank.tolist() == [3] and scores.ap[0] == pytest.approx((1 / 3 + 2 / 4) / 2)


def flatten(summary):
    """{"cmc": {"1": a, ...}, "mAP": m, "mINP": i} -> {"R1": a, ..., "mAP": m, "mINP": i}."""
    return {**{f"R{k}": v for k, v in summary["cmc"].items()}, "mAP": summary["mAP"], "mINP": summary["mINP"]}


def reference_scores(similarity, query_labels, gallery_labels, valid, identity_level):
    """Per query, as the official SYSU-MM01 / AGW code does it: one loop, one sort."""
    ranks, aps, inps = [], [], []
    for q in range(len(query_labels)):
        kept = [g for g in range(len(gallery_labels)) if valid[q, g]]
        ranked = sorted(kept, key=lambda g: (-similarity[q, g], g))  # stable on -similarity
        correct = [gallery_labels[g] == query_labels[q] for g in ranked]
        if not any(correct):
            ranks.append(0), aps.append(0.0), inps.append(0.0)
            continue
        positions = [k + 1 for k, c in enumerate(correct) if c]  # 1-based
        if identity_level:
            wrong_before = {gallery_labels[g] for g in ranked[: positions[0] - 1]}
            ranks.append(1 + len(wrong_before))
        else:
            ranks.append(positions[0])
        aps.append(np.mean([(i + 1) / p for i, p in enumerate(positions)]))
        inps.append(len(positions) / positions[-1])
    return np.array(ranks), np.array(aps), np.array(inps)


@pytest.mark.parametrize("identity_level", [False, True])
@pytest.mark.parametrize("quantized", [False, True])
def test_matches_a_per_query_reference(identity_level, quantized):
    # 700 queries span two query blocks; 1 in 10 queries has an id absent from the gallery.
    rng = np.random.default_rng(3)
    num_queries, num_gallery = 700, 40
    similarity = metrics.cosine_similarity(rng.normal(size=(num_queries, 8)), rng.normal(size=(num_gallery, 8)))
    if quantized:  # many exact ties
        similarity = np.round(similarity, 1)
    query_labels = rng.integers(0, 11, num_queries)
    gallery_labels = rng.integers(0, 10, num_gallery)
    valid = rng.random((num_queries, num_gallery)) > 0.3

    scores = metrics.score_similarity(similarity, query_labels, gallery_labels, valid, identity_level)
    rank, ap, inp = reference_scores(similarity, query_labels, gallery_labels, valid, identity_level)
    np.testing.assert_array_equal(scores.rank, rank)
    np.testing.assert_allclose(scores.ap, ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores.inp, inp, rtol=0, atol=1e-12)
    assert 0 < np.sum(rank == 0) < num_queries


@pytest.mark.parametrize("identity_level", [False, True])
def test_invariant_to_gallery_order(identity_level):
    rng = np.random.default_rng(5)
    query, gallery = rng.normal(size=(30, 16)), rng.normal(size=(50, 16))
    query_labels, gallery_labels = rng.integers(0, 6, 30), rng.integers(0, 6, 50)
    permutation = rng.permutation(50)
    expected = metrics.evaluate(query, gallery, query_labels, gallery_labels, identity_level=identity_level)
    permuted = metrics.evaluate(
        query, gallery[permutation], query_labels, gallery_labels[permutation], identity_level=identity_level)
    assert flatten(permuted) == pytest.approx(flatten(expected), abs=1e-12)


def test_identity_level_cmc_never_worse_than_image_level():
    rng = np.random.default_rng(7)
    similarity = rng.normal(size=(200, 60))
    query_labels, gallery_labels = rng.integers(0, 8, 200), rng.integers(0, 8, 60)
    image = metrics.score_similarity(similarity, query_labels, gallery_labels)
    identity = metrics.score_similarity(similarity, query_labels, gallery_labels, identity_level=True)
    assert np.all(identity.rank <= image.rank) and np.any(identity.rank < image.rank)
    np.testing.assert_array_equal(identity.ap, image.ap)


def test_perfect_features_score_one():
    labels = np.repeat(np.arange(4), 3)
    features = np.eye(4)[labels] * np.arange(1, 13)[:, None]  # norms differ: cosine ignores them
    summary = metrics.evaluate(features, features[::-1], labels, labels[::-1])
    assert summary == {"cmc": {"1": 1.0, "5": 1.0, "10": 1.0, "20": 1.0}, "mAP": 1.0, "mINP": 1.0}


def test_format_summary():
    summary = {"cmc": {"1": 0.5, "5": 0.75, "10": 1.0, "20": 1.0}, "mAP": 0.123456, "mINP": 0.0}
    assert metrics.format_summary(summary) == "R1 50.00% R5 75.00% R10 100.00% R20 100.00% mAP 12.35% mINP 0.00%"


def test_cosine_similarity():
    similarity = metrics.cosine_similarity([[1.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [3.0, 3.0]])
    np.testing.assert_allclose(similarity, [[0.0, 1 / np.sqrt(2)], [0.0, 0.0]])


def test_concatenate_keeps_query_order():
    a = metrics.QueryScores(rank=np.array([1]), ap=np.array([1.0]), inp=np.array([1.0]))
    b = metrics.QueryScores(rank=np.array([0, 3]), ap=np.array([0.0, 0.5]), inp=np.array([0.0, 0.25]))
    both = metrics.QueryScores.concatenate([a, b])
    assert both.rank.tolist() == [1, 0, 3] and both.inp.tolist() == [1.0, 0.0, 0.25]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="query_labels must be"):
        metrics.score_similarity(np.zeros((2, 3)), [1], [1, 2, 3])
    with pytest.raises(ValueError, match="valid mask is"):
        metrics.score_similarity(np.zeros((2, 3)), [1, 2], [1, 2, 3], valid=np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="gallery is empty"):
        metrics.score_similarity(np.zeros((2, 0)), [1, 2], [])
    with pytest.raises(ValueError, match="none of the 2 queries has a correct match"):
        metrics.summarize(metrics.score_similarity(np.zeros((2, 3)), [7, 8], [1, 2, 3]))
