"""FID and MD arithmetic: closed forms of Gaussian cases and hand-computed distances."""

import numpy as np
import pytest
import scipy.stats

from jsia_tf.eval import quality


def random_covariance(rng, dim):
    root = rng.normal(size=(dim, dim))
    return root @ root.T + 0.1 * np.eye(dim)


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(200, 16))
    assert quality.fid(features, features) == pytest.approx(0.0, abs=1e-6)


def test_one_dimensional_closed_form():
    # (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s.
    assert quality.frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(3.0 ** 2 + (2.0 - 3.0) ** 2, abs=1e-12)
    assert quality.frechet_distance([0.5], [[0.25]], [0.5], [[0.25]]) == pytest.approx(0.0, abs=1e-12)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    expected = np.sum((mu1 - mu2) ** 2 + (np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert quality.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, abs=1e-10)


def test_commuting_covariances_closed_form():
    # S1 = U diag(a) U^T and S2 = U diag(b) U^T commute: the distance is that of diag(a), diag(b).
    rng = np.random.default_rng(2)
    rotation = scipy.stats.special_ortho_group.rvs(6, random_state=3)
    a, b = rng.uniform(0.2, 2, size=6), rng.uniform(0.2, 2, size=6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    sigma1, sigma2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert quality.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, abs=1e-10)


def test_symmetric_and_non_negative():
    rng = np.random.default_rng(4)
    for dim in (1, 3, 8):
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        sigma1, sigma2 = random_covariance(rng, dim), random_covariance(rng, dim)
        forward = quality.frechet_distance(mu1, sigma1, mu2, sigma2)
        assert forward > 0
        assert quality.frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(forward, rel=1e-9)
        # Only the means differ: the distance is ||mu1 - mu2||^2.
        assert quality.frechet_distance(mu1, sigma1, mu2, sigma1) == pytest.approx(np.sum((mu1 - mu2) ** 2),
                                                                                   abs=1e-8)


def test_singular_covariances():
    # Rank-1 covariances of 3-D features (fewer directions than dimensions): S1 S2 is singular.
    direction = np.array([1.0, 2.0, 0.5])
    features_a = np.outer(np.arange(10.0), direction)
    features_b = np.outer(np.arange(10.0), 0.5 * direction) + 1.0
    mu_a, sigma_a = quality.feature_statistics(features_a)
    mu_b, sigma_b = quality.feature_statistics(features_b)
    # Both lie on one line: the 1-D closed form along it, standard deviations s and s / 2.
    std_a = np.std(np.arange(10.0), ddof=1) * np.linalg.norm(direction)
    expected = np.sum((mu_a - mu_b) ** 2) + (std_a - std_a / 2) ** 2
    assert quality.fid(features_a, features_b) == pytest.approx(expected, rel=1e-6)


def test_non_finite_square_root_retries_with_the_offset(monkeypatch):
    # Rounding can make sqrtm of a near-singular S1 S2 non-finite; the retry adds eps I to both.
    calls = []
    sqrtm = quality.scipy.linalg.sqrtm

    def first_call_fails(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else sqrtm(matrix)

    monkeypatch.setattr(quality.scipy.linalg, "sqrtm", first_call_fails)
    value = quality.frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.ones(2), np.diag([4.0, 9.0]), eps=0.5)
    np.testing.assert_allclose(calls[1], np.diag([1.5 * 4.5, 4.5 * 9.5]))
    # Traces of the unshifted covariances, square root of the shifted product.
    expected = 2 + (1 + 4 + 4 + 9) - 2 * (np.sqrt(1.5 * 4.5) + np.sqrt(4.5 * 9.5))
    assert value == pytest.approx(expected, abs=1e-12)


def test_samples_of_one_gaussian_are_close():
    rng = np.random.default_rng(5)
    mean, covariance = rng.normal(size=4), random_covariance(rng, 4)
    same = quality.fid(rng.multivariate_normal(mean, covariance, 20000),
                       rng.multivariate_normal(mean, covariance, 20000))
    shifted = quality.fid(rng.multivariate_normal(mean, covariance, 20000),
                          rng.multivariate_normal(mean + 1.0, covariance, 20000))
    assert 0 <= same < 0.02
    assert shifted == pytest.approx(4.0, rel=0.05)  # ||shift||^2 = 4


def test_feature_statistics():
    features = np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
    mu, sigma = quality.feature_statistics(features)
    np.testing.assert_allclose(mu, [3.0, 2.0])
    # Unbiased: divide by N - 1 = 2. Deviations (-2, 0), (0, -2), (2, 2).
    np.testing.assert_allclose(sigma, [[4.0, 2.0], [2.0, 4.0]])
    mu, sigma = quality.feature_statistics(np.array([[1.0], [3.0]]))
    assert mu.shape == (1,) and sigma.shape == (1, 1) and sigma[0, 0] == pytest.approx(2.0)


def test_mean_pair_distance_hand_computed():
    a = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = np.array([[3.0, 4.0], [1.0, 1.0], [2.0, 1.0]])
    assert quality.mean_pair_distance(a, b) == pytest.approx((5.0 + 0.0 + 1.0) / 3)
    # Images [N, H, W, C] are flattened per pair: distances 2 (four 1s) and 0.
    images = np.zeros((2, 2, 2, 1))
    assert quality.mean_pair_distance(images + np.array([1.0, 0.0])[:, None, None, None], images) == 1.0


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"sigma2 must be \(2, 2\)"):
        quality.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match=r"mu2 must be \(2,\)"):
        quality.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="must be positive semi-definite"):
        quality.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match=r"features must be a numeric array \[N, D\] with N >= 2"):
        quality.fid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="features contain NaN"):
        quality.feature_statistics(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match=r"a and b must have the same shape"):
        quality.mean_pair_distance(np.zeros((3, 2)), np.zeros((2, 2)))
