"""k-reciprocal re-ranking: a step-by-step reference, the limits of lambda, and a case it fixes."""

import math

import numpy as np
import pytest

from jsia_tf.eval import metrics, rerank


def reference_rerank(query_features, gallery_features, k1, k2, lambda_value):
    """Zhong et al. (CVPR 2017), step by step with plain Python loops and sets."""
    points = [[float(v) for v in row] for row in np.concatenate([query_features, gallery_features])]
    points = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in points]
    n, num_queries = len(points), len(query_features)
    # Original distance: squared Euclidean, each row divided by its maximum.
    distance = [[sum((a - b) ** 2 for a, b in zip(points[p], points[j])) for j in range(n)] for p in range(n)]
    distance = [[d / max(row) for d in row] for row in distance]
    # N(p, k): p first, then by distance, ties by index.
    order = [sorted(range(n), key=lambda j, p=p: (j != p, distance[p][j], j)) for p in range(n)]

    def nearest(p, k):
        return set(order[p][:k])

    def reciprocal(p, k):  # Eq. 4
        return {j for j in nearest(p, k + 1) if p in nearest(j, k + 1)}

    encoding = []
    for p in range(n):
        r = reciprocal(p, k1)
        expanded = set(r)
        for candidate in r:  # Eq. 6
            r_half = reciprocal(candidate, round(k1 / 2))
            if len(r_half & r) > 2 / 3 * len(r_half):
                expanded |= r_half
        total = sum(math.exp(-distance[p][j]) for j in expanded)  # Eq. 7
        encoding.append([math.exp(-distance[p][j]) / total if j in expanded else 0.0 for j in range(n)])
    # Local query expansion, Eq. 11.
    encoding = [[sum(encoding[i][j] for i in order[p][:k2]) / len(order[p][:k2]) for j in range(n)]
                for p in range(n)]
    final = np.zeros((num_queries, n - num_queries))
    for q in range(num_queries):
        for g in range(num_queries, n):
            smaller = sum(min(a, b) for a, b in zip(encoding[q], encoding[g]))
            larger = sum(max(a, b) for a, b in zip(encoding[q], encoding[g]))
            jaccard = 1 - smaller / larger  # Eq. 10
            final[q, g - num_queries] = (1 - lambda_value) * jaccard + lambda_value * distance[q][g]  # Eq. 12
    return final


@pytest.mark.parametrize("k1, k2, lambda_value", [(20, 6, 0.3), (5, 3, 0.0), (3, 1, 0.5), (8, 2, 0.9), (1, 4, 0.2),
                                                  (60, 50, 0.3)])
def test_matches_the_step_by_step_reference(k1, k2, lambda_value):
    rng = np.random.default_rng(k1 * 100 + k2)
    # Three loose clusters make the reciprocal sets and their expansion non-trivial.
    centres = rng.normal(size=(3, 5))
    query = centres[rng.integers(0, 3, 12)] + 0.8 * rng.normal(size=(12, 5))
    gallery = centres[rng.integers(0, 3, 30)] + 0.8 * rng.normal(size=(30, 5))
    expected = reference_rerank(query, gallery, k1, k2, lambda_value)
    distance = rerank.k_reciprocal_rerank(query, gallery, k1=k1, k2=k2, lambda_value=lambda_value)
    assert distance.shape == (12, 30) and distance.dtype == np.float64
    np.testing.assert_allclose(distance, expected, rtol=0, atol=1e-10)
    assert np.all(distance >= 0) and np.all(distance <= 1)


def test_expansion_is_exercised_by_the_reference_case():
    # Guards the reference test: with these features the 2/3 rule adds images to some R(p, k1).
    rng = np.random.default_rng(20 * 100 + 6)
    centres = rng.normal(size=(3, 5))
    features = metrics.l2_normalize(np.concatenate([centres[rng.integers(0, 3, 12)] + 0.8 * rng.normal(size=(12, 5)),
                                                    centres[rng.integers(0, 3, 30)] + 0.8 * rng.normal(size=(30, 5))]))
    neighbours, _ = rerank._nearest_neighbours(features, 21)
    reciprocal = rerank._reciprocal_sets(neighbours, 20)
    expanded = rerank._expanded_reciprocal_sets(neighbours, 20)
    assert expanded.nnz > reciprocal.nnz
    assert (expanded.multiply(reciprocal)).nnz == reciprocal.nnz  # R(p, k1) is kept whole


def test_lambda_one_is_the_row_normalised_squared_euclidean_distance():
    rng = np.random.default_rng(0)
    query, gallery = rng.normal(size=(4, 6)), rng.normal(size=(9, 6))
    unit = metrics.l2_normalize(np.concatenate([query, gallery]))
    squared = np.sum((unit[:, None] - unit[None]) ** 2, axis=-1)  # [13, 13]
    expected = (squared / squared.max(axis=1, keepdims=True))[:4, 4:]
    np.testing.assert_allclose(rerank.k_reciprocal_rerank(query, gallery, lambda_value=1.0), expected,
                               rtol=0, atol=1e-12)
    # Same ranking as the cosine similarity: the distance is 2 - 2 cos over a per-query positive scale.
    cosine_order = np.argsort(-metrics.cosine_similarity(query, gallery), axis=1)
    np.testing.assert_array_equal(np.argsort(expected, axis=1), cosine_order)


def test_jaccard_part_is_zero_for_identical_neighbourhoods():
    # A query with an exact copy in the gallery: same encoding row, Jaccard distance 0.
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(10, 4))
    distance = rerank.k_reciprocal_rerank(gallery[2:3], gallery, k1=4, k2=1, lambda_value=0.0)
    assert distance[0, 2] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.delete(distance[0], 2) > 0)


def on_arc(degrees):
    """Unit vectors at ``degrees`` on the great circle from e1 to e2: [n, 3]."""
    radians = np.radians(degrees)
    return np.stack([np.cos(radians), np.sin(radians), np.zeros_like(radians)], axis=1)


def test_fixes_a_hard_negative():
    # Positions on one arc, in degrees. Person 0: 3-9; person 1: a tight cluster at 33-35
    # and a hard negative at 28. The query (person 0) sits at 20: the hard negative is its
    # nearest image (8 degrees, the nearest person-0 image 11), and the cluster comes next.
    # But the hard negative's own 6 nearest images are its cluster, so it is not a
    # k-reciprocal neighbour of the query, while the person-0 images are.
    gallery_labels = np.array([0] * 4 + [1] * 8 + [1])
    gallery = on_arc(np.r_[[3.0, 5.0, 7.0, 9.0], np.linspace(33, 35, 8), 28.0])
    query = on_arc(np.array([20.0]))
    similarity = metrics.cosine_similarity(query, gallery)
    distance = rerank.k_reciprocal_rerank(query, gallery, k1=6, k2=3, lambda_value=0.3)
    plain = metrics.summarize(metrics.score_similarity(similarity, [0], gallery_labels))
    reranked = metrics.summarize(metrics.score_similarity(-distance, [0], gallery_labels))
    assert np.argmax(similarity[0]) == 12 and plain["cmc"]["1"] == 0.0
    np.testing.assert_array_equal(gallery_labels[np.argsort(distance[0])][:5], [0, 0, 1, 0, 0])
    assert reranked["cmc"]["1"] == 1.0
    assert plain["mAP"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 12 + 4 / 13) / 4)
    assert reranked["mAP"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 5) / 4)


def test_duplicates_and_tiny_sets():
    # Exact duplicates (distance-0 ties) and k larger than the set: finite, in [0, 1].
    labels = np.repeat(np.arange(3), 3)
    features = np.eye(3)[labels]  # [9, 3], three copies of each point
    is_query = np.arange(9) % 3 == 0  # one copy of each point queries the other two
    distance = rerank.k_reciprocal_rerank(features[is_query], features[~is_query], k1=20, k2=6)
    assert distance.shape == (3, 6) and np.all(np.isfinite(distance))
    assert np.all((distance >= 0) & (distance <= 1))
    same = labels[is_query][:, None] == labels[~is_query][None, :]  # [3, 6]
    assert distance[same].max() < distance[~same].min()
    # One query and one gallery image: still defined.
    assert rerank.k_reciprocal_rerank(features[:1], features[3:4]).shape == (1, 1)


def test_smallest_stable_equals_the_stable_sort():
    # Few distinct keys: ties everywhere, across the k-th place too.
    keys = np.random.default_rng(8).integers(0, 5, size=(50, 30)).astype(float)
    for k in (1, 4, 17, 30):
        np.testing.assert_array_equal(rerank._smallest_stable(keys, k), np.argsort(keys, axis=1, kind="stable")[:, :k])


def test_blocks_do_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(7)
    query, gallery = rng.normal(size=(9, 4)), rng.normal(size=(25, 4))
    whole = rerank.k_reciprocal_rerank(query, gallery, k1=6, k2=3)
    monkeypatch.setattr(rerank, "_BLOCK_ENTRIES", 40)  # one distance row, ten V entries per block
    monkeypatch.setattr(rerank, "_BLOCK_PAIRS", 30)  # one query per Jaccard block
    np.testing.assert_allclose(rerank.k_reciprocal_rerank(query, gallery, k1=6, k2=3), whole, rtol=0, atol=1e-14)


def test_errors_name_the_argument():
    features = np.ones((3, 2))
    cases = {
        "k1 must be a positive integer": dict(k1=0),
        "k2 must be a positive integer": dict(k2=2.5),
        r"lambda_value must be a number in \[0, 1\]": dict(lambda_value=1.5),
    }
    for message, kwargs in cases.items():
        with pytest.raises(ValueError, match=message):
            rerank.k_reciprocal_rerank(features, features, **kwargs)
    with pytest.raises(ValueError, match="query_features must be a non-empty float array"):
        rerank.k_reciprocal_rerank(np.ones((0, 2)), features)
    with pytest.raises(ValueError, match="gallery_features contain NaN"):
        rerank.k_reciprocal_rerank(features, np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="query_features have 2 dimensions, gallery_features 3"):
        rerank.k_reciprocal_rerank(features, np.ones((3, 3)))
