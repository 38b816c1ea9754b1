"""FID and MD arithmetic: closed forms of Gaussian cases and hand-computed distances; the
InceptionV3 feature extractor with a randomly initialised weights file."""

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

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


def test_low_rank_fid_equals_the_square_root_form():
    # Fewer images than dimensions: fid takes the nuclear-norm route; frechet_distance takes sqrtm.
    rng = np.random.default_rng(6)
    features_a, features_b = rng.normal(size=(5, 12)), rng.normal(1.0, 2.0, size=(7, 12))
    statistics = quality.feature_statistics(features_a) + quality.feature_statistics(features_b)
    expected = quality.frechet_distance(*statistics)
    assert quality.fid(features_a, features_b) == pytest.approx(expected, rel=1e-6)
    assert quality.fid(features_a, features_a) == pytest.approx(0.0, abs=1e-9)
    assert quality.fid(features_a, features_a + 2.0) == pytest.approx(12 * 2.0 ** 2, rel=1e-9)  # a mean shift


def test_identity_distance_is_the_rms_gray_difference():
    black, white = np.zeros((2, 4, 2, 3), np.uint8), np.full((2, 4, 2, 3), 255, np.uint8)
    assert quality.identity_distance(black, white) == pytest.approx(1.0, rel=1e-3)  # luma weights sum to 0.9999
    assert quality.identity_distance(white, white) == 0.0
    # Pure colour (no luminance change) is no identity difference: an RGB image and its gray IR rendering.
    rgb = np.random.default_rng(7).integers(0, 256, (3, 8, 4, 3)).astype(np.uint8)
    gray = np.repeat(np.round(rgb @ np.array(quality.LUMA_RGB))[..., None], 3, axis=-1).astype(np.uint8)
    assert quality.identity_distance(rgb, gray) < 0.6 / 255  # rounding of the gray image only
    # Half of the pixels differ by 0.5 in gray: sqrt(0.5 * 0.25); independent of the image size.
    for height, width in ((4, 2), (40, 20)):
        a = np.zeros((1, height, width, 3), np.uint8)
        b = a.copy()
        b[:, : height // 2] = 255
        b = (b // 2).astype(np.uint8)  # 127: gray 127 / 255
        assert quality.identity_distance(a, b) == pytest.approx(np.sqrt(0.5) * 127 * 0.9999 / 255, rel=1e-6)
    with pytest.raises(ValueError, match=r"images must be RGB \[N, H, W, 3\]"):
        quality.identity_distance(np.zeros((2, 4, 3)), np.zeros((2, 4, 3)))


def test_inception_weights_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"inception_weights='/no/such.weights.h5': no such file"):
        quality.inception_model("/no/such.weights.h5")
    wrong = tmp_path / "notes.weights.h5"
    wrong.write_text("not an HDF5 file")
    with pytest.raises(ValueError, match=r"inception_weights=.*notes.weights.h5.*expected InceptionV3"):
        quality.inception_model(str(wrong))


def test_inception_features_from_a_weights_file(tmp_path):
    keras.utils.set_random_seed(1)
    path = tmp_path / "inception.weights.h5"
    saved = keras.applications.InceptionV3(include_top=False, pooling="avg", weights=None)
    saved.save_weights(path)
    model = quality.inception_model(str(path))
    for loaded, expected in zip(model.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(loaded, expected)
    images = np.random.default_rng(8).integers(0, 256, (3, 32, 16, 3)).astype(np.uint8)
    features = quality.inception_features(model, images, batch_size=2)
    assert features.shape == (3, quality.INCEPTION_DIM) and features.dtype == np.float64
    # Resized to 299x299 and scaled to [-1, 1]; batches do not matter.
    resized = keras.applications.inception_v3.preprocess_input(tf.image.resize(images.astype(np.float32), (299, 299)))
    np.testing.assert_allclose(features, saved(resized).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(features[2:], quality.inception_features(model, images[2:]), rtol=1e-4, atol=1e-6)
