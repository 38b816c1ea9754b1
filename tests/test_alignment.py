"""Module F (Sec. 3.3): gray input, the stripes of Eq. 12, the classifiers, Eq. 17, routing, checkpoints.

A tiny ResNet-18 backbone (widths 8, 16, 16, 32) on 32x16 images: E^sl -> [B, 8, 4, 8],
E^il -> T [B, 2, 1, 32].
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from jsia_tf.data.pipeline import normalize
from jsia_tf.models import alignment, backbone

HEIGHT, WIDTH = 32, 16
TINY_WIDTHS = (8, 16, 16, 32)
FEATURE_DIM = 32  # ResNet-18's last stage outputs widths[3]
NUM_CLASSES = 5
NUM_REGIONS = 3


def _model(num_regions=NUM_REGIONS, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    parts = backbone.build_backbone("resnet18", widths=TINY_WIDTHS)
    model = alignment.FeatureAlignment(parts.set_level_encoder, parts.instance_level_encoder, NUM_CLASSES,
                                       num_regions=num_regions, **kwargs)
    model.build((None, HEIGHT, WIDTH, 3))
    return model


def _pixels(batch=4, seed=1):
    """Random RGB pixels in [0, 255], [B, 32, 16, 3]."""
    return np.random.default_rng(seed).uniform(0.0, 255.0, (batch, HEIGHT, WIDTH, 3)).astype("float32")


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def images():
    return normalize(_pixels())


# --- to_gray -----------------------------------------------------------------------


def test_to_gray_keeps_gray_images():
    gray_pixels = np.repeat(_pixels()[..., :1], 3, axis=-1)  # R = G = B
    images = normalize(gray_pixels)
    # The official weights sum to 0.9999: a gray pixel p comes back as 0.9999 p.
    np.testing.assert_allclose(alignment.to_gray(images), normalize(0.9999 * gray_pixels), atol=1e-4)
    np.testing.assert_allclose(alignment.to_gray(images), images, atol=0.0256)


def test_to_gray_hand_computed_pixel():
    pixel = np.array([[[[200.0, 100.0, 50.0]]]], "float32")  # R, G, B
    gray = 0.2989 * 200.0 + 0.5870 * 100.0 + 0.1140 * 50.0  # 124.18
    expected = normalize(np.full((1, 1, 1, 3), gray, "float32"))
    result = alignment.to_gray(normalize(pixel))
    assert result.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(result, expected, atol=1e-4)
    np.testing.assert_allclose(result.numpy() + np.array([103.939, 116.779, 123.68]), np.full((1, 1, 1, 3), 124.18),
                               atol=1e-4)


def test_to_gray_keeps_dtype():
    images = tf.cast(normalize(_pixels(batch=1)), tf.bfloat16)
    assert alignment.to_gray(images).dtype == tf.bfloat16


# --- stripes (Eq. 12) --------------------------------------------------------------


def _numpy_adaptive_avg_pool_rows(maps, n):
    """PyTorch AdaptiveAvgPool2d((n, 1)) on [B, h, w, D]: n x [B, D]."""
    h = maps.shape[1]
    return [maps[:, int(np.floor(k * h / n)):int(np.ceil((k + 1) * h / n))].mean(axis=(1, 2)) for k in range(n)]


@pytest.mark.parametrize("height, n, expected", [
    (6, 3, ((0, 2), (2, 4), (4, 6))),  # divisible: disjoint stripes
    (5, 3, ((0, 2), (1, 4), (3, 5))),  # not divisible: overlapping rows 1 and 3
    (2, 3, ((0, 1), (0, 2), (1, 2))),  # fewer rows than stripes
    (16, 6, ((0, 3), (2, 6), (5, 8), (8, 11), (10, 14), (13, 16))),  # ResNet-50 at 256x128, PCB's n
])
def test_stripe_bounds(height, n, expected):
    assert alignment.stripe_bounds(height, n) == expected
    as_tensors = alignment.stripe_bounds(tf.constant(height), n)
    assert tuple((int(s), int(e)) for s, e in as_tensors) == expected


@pytest.mark.parametrize("height, n", [(6, 3), (5, 3), (7, 6), (2, 3), (4, 1)])
def test_pool_stripes_matches_adaptive_avg_pool(height, n):
    rng = np.random.default_rng(height * 10 + n)
    # Constant rows: row r holds the value row_values[r] (per sample and channel) in every column.
    row_values = rng.normal(size=(2, height, 1, 4)).astype("float32")
    maps = np.repeat(row_values, 3, axis=2)  # [2, height, 3, 4]
    pooled = alignment.pool_stripes(tf.constant(maps), n)
    expected = _numpy_adaptive_avg_pool_rows(maps, n)
    assert len(pooled) == n
    for k, (start, end) in enumerate(alignment.stripe_bounds(height, n)):
        assert pooled[k].dtype == tf.float32
        np.testing.assert_allclose(pooled[k], expected[k], atol=1e-6)
        np.testing.assert_allclose(pooled[k], row_values[:, start:end, 0].mean(axis=1), atol=1e-6)


def test_pool_stripes_dynamic_height():
    pool = tf.function(lambda maps: alignment.pool_stripes(maps, 3),
                       input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32)])
    maps = np.random.default_rng(0).normal(size=(2, 5, 2, 4)).astype("float32")
    for got, expected in zip(pool(maps), _numpy_adaptive_avg_pool_rows(maps, 3)):
        np.testing.assert_allclose(got, expected, atol=1e-6)


# --- the model's outputs -----------------------------------------------------------


def test_outputs_and_shapes(model, images):
    out = model(images, training=False)
    assert out["feature_map"].shape == (4, HEIGHT // 16, WIDTH // 16, FEATURE_DIM)
    assert out["features"].shape == out["bn_features"].shape == (4, FEATURE_DIM)
    assert out["logits"].shape == (4, NUM_CLASSES)
    assert isinstance(out["local_logits"], tuple) and len(out["local_logits"]) == NUM_REGIONS
    for logits in out["local_logits"]:
        assert logits.shape == (4, NUM_CLASSES)
    np.testing.assert_allclose(out["features"], tf.reduce_mean(out["feature_map"], axis=[1, 2]), atol=1e-6)
    # Each C^k classifies the pooled k-th stripe; C the whole map.
    stripes = alignment.pool_stripes(out["feature_map"], NUM_REGIONS)
    for classifier, stripe, logits in zip(model.local_classifiers, stripes, out["local_logits"]):
        np.testing.assert_allclose(classifier(stripe, training=False)[1], logits, atol=1e-6)
    bn, logits = model.classifier(out["features"], training=False)
    np.testing.assert_allclose(bn, out["bn_features"], atol=1e-6)
    np.testing.assert_allclose(logits, out["logits"], atol=1e-6)


def test_call_is_instance_level_of_set_level(model, images):
    maps = model.set_level(images, training=False)
    assert maps.shape == (4, HEIGHT // 4, WIDTH // 4, TINY_WIDTHS[0])
    split = model.instance_level(maps, training=False)
    whole = model(images, training=False)
    assert split.keys() == whole.keys()
    for key in ("feature_map", "features", "bn_features", "logits"):
        np.testing.assert_allclose(split[key], whole[key], atol=1e-6)
    for a, b in zip(split["local_logits"], whole["local_logits"]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_local_classifiers_are_distinct(model):
    classifiers = model.local_classifiers
    assert len(classifiers) == NUM_REGIONS
    kernels = {id(c.dense.kernel) for c in (model.classifier, *classifiers)}
    assert len(kernels) == NUM_REGIONS + 1
    assert [c.name for c in classifiers] == [f"local_classifier{k}" for k in range(NUM_REGIONS)]


def test_no_local_regions(images):
    model = _model(num_regions=0)
    assert model.local_classifiers == ()
    out = model(images, training=False)
    assert out["local_logits"] == ()
    assert not any("local_classifier" in w.path for w in model.weights)


@pytest.mark.parametrize("kwargs", [{"num_regions": -1}, {"num_regions": 2.0}, {"test_features": "gap"}])
def test_bad_arguments(kwargs):
    parts = backbone.build_backbone("resnet18", widths=TINY_WIDTHS)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        alignment.FeatureAlignment(parts.set_level_encoder, parts.instance_level_encoder, NUM_CLASSES,
                                   **{"num_regions": 4, **kwargs})


def test_get_config_is_not_supported(model):
    with pytest.raises(NotImplementedError, match="build_backbone"):
        model.get_config()


# --- gradient routing --------------------------------------------------------------


def _gradient_reaches(model, images, loss_fn):
    """{variable path: whether loss_fn(outputs) has a gradient there} over trainable variables."""
    with tf.GradientTape() as tape:
        loss = loss_fn(model(images, training=True))
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    return {v.path: g is not None for v, g in zip(variables, gradients)}


def _group(model, path):
    for name, part in (("sl", model.set_level_encoder), ("il", model.instance_level_encoder), ("C", model.classifier),
                       *((f"C{k}", c) for k, c in enumerate(model.local_classifiers))):
        if path in {v.path for v in part.trainable_variables}:
            return name
    raise AssertionError(f"{path} belongs to no part of the model")


def test_global_logits_reach_encoders_and_c_only(model, images):
    reached = _gradient_reaches(model, images, lambda out: tf.reduce_sum(out["logits"] * tf.range(1.0, 6.0)))
    for path, has_gradient in reached.items():
        assert has_gradient == (_group(model, path) in ("sl", "il", "C")), path


@pytest.mark.parametrize("k", [0, NUM_REGIONS - 1])
def test_local_logits_reach_encoders_and_their_classifier_only(model, images, k):
    reached = _gradient_reaches(model, images, lambda out: tf.reduce_sum(out["local_logits"][k] * tf.range(1.0, 6.0)))
    for path, has_gradient in reached.items():
        assert has_gradient == (_group(model, path) in ("sl", "il", f"C{k}")), path


def test_triplet_features_skip_the_classifiers(model, images):
    reached = _gradient_reaches(model, images, lambda out: tf.reduce_sum(out["features"] ** 2))
    for path, has_gradient in reached.items():
        assert has_gradient == (_group(model, path) in ("sl", "il")), path


# --- IdentityClassifier ------------------------------------------------------------


def test_identity_classifier_weights_and_init():
    keras.utils.set_random_seed(3)
    classifier = alignment.IdentityClassifier(200, name="c")
    classifier.build((None, 64))
    assert classifier.batch_norm.beta is None  # no shift: the official frozen-zero BN bias
    assert classifier.dense.bias is None
    assert sorted(w.path for w in classifier.trainable_weights) == ["c/batch_norm/gamma", "c/dense/kernel"]
    np.testing.assert_array_equal(classifier.batch_norm.gamma, np.ones(64))
    kernel = classifier.dense.kernel.numpy()  # 12,800 draws of N(0, 0.001)
    assert kernel.shape == (64, 200)
    assert 0.0009 < kernel.std() < 0.0011
    assert abs(kernel.mean()) < 0.0001


def test_identity_classifier_values():
    keras.utils.set_random_seed(4)
    classifier = alignment.IdentityClassifier(3)
    features = np.random.default_rng(0).normal(2.0, 3.0, (8, 4)).astype("float32")
    bn, logits = classifier(features, training=True)
    # Training mode: batch statistics, biased variance, eps 1e-5, gamma 1, no beta.
    expected = (features - features.mean(0)) / np.sqrt(features.var(0) + 1e-5)
    np.testing.assert_allclose(bn, expected, atol=1e-4)
    np.testing.assert_allclose(logits, expected @ classifier.dense.kernel.numpy(), atol=1e-5)
    # Moving statistics moved 0.1 of the way (PyTorch momentum 0.1) from (0, 1).
    np.testing.assert_allclose(classifier.batch_norm.moving_mean, 0.1 * features.mean(0), atol=1e-4)
    np.testing.assert_allclose(classifier.batch_norm.moving_variance, 0.9 + 0.1 * features.var(0, ddof=0),
                               rtol=0.02)  # Keras uses the biased batch variance; PyTorch the unbiased
    bn, _ = classifier(features, training=False)
    mean, variance = classifier.batch_norm.moving_mean.numpy(), classifier.batch_norm.moving_variance.numpy()
    np.testing.assert_allclose(bn, (features - mean) / np.sqrt(variance + 1e-5), atol=1e-4)


def test_identity_classifier_config_round_trip():
    classifier = alignment.IdentityClassifier(7, synchronized=True, name="c")
    config = classifier.get_config()
    assert config["num_classes"] == 7 and config["synchronized"] is True
    clone = alignment.IdentityClassifier.from_config(config)
    assert (clone.num_classes, clone.synchronized, clone.name) == (7, True, "c")
    with pytest.raises(ValueError, match="num_classes"):
        alignment.IdentityClassifier(0)


# --- Eq. 17 ------------------------------------------------------------------------


def _train_batch_norm(model, images):
    """One training-mode call, so that the classifier's moving statistics are not (0, 1)."""
    model(images * 0.5 + 3.0, training=True)


def test_embed_is_normalised_bn_output(images):
    model = _model(test_features="bn")
    _train_batch_norm(model, images)
    moving_mean = model.classifier.batch_norm.moving_mean.numpy()
    embeddings = model.embed(images)
    assert embeddings.dtype == tf.float32 and embeddings.shape == (4, FEATURE_DIM)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-5)
    bn = model(images, training=False)["bn_features"].numpy()
    np.testing.assert_allclose(embeddings, bn / np.linalg.norm(bn, axis=-1, keepdims=True), atol=1e-5)
    np.testing.assert_array_equal(model.embed(images), embeddings)  # deterministic
    np.testing.assert_array_equal(model.classifier.batch_norm.moving_mean, moving_mean)  # inference mode


def test_embed_pool_is_normalised_v(images):
    model = _model(test_features="pool")
    _train_batch_norm(model, images)
    embeddings = model.embed(images)
    v = model(images, training=False)["features"].numpy()
    np.testing.assert_allclose(embeddings, v / np.linalg.norm(v, axis=-1, keepdims=True), atol=1e-5)


def test_embed_gray_input():
    model = _model(gray_input=True)
    pixels = _pixels()
    # The gray image of the same luminance (the weights sum to 0.9999).
    gray = pixels @ np.array([0.2989, 0.5870, 0.1140], "float32") / 0.9999  # [B, H, W]
    gray_pixels = np.repeat(gray[..., np.newaxis], 3, axis=-1)
    np.testing.assert_allclose(model.embed(normalize(pixels)), model.embed(normalize(gray_pixels)), atol=1e-5)
    # Without gray input the colours matter.
    colour_model = _model(gray_input=False)
    assert not np.allclose(colour_model.embed(normalize(pixels)), colour_model.embed(normalize(gray_pixels)),
                           atol=1e-3)


# --- weights -----------------------------------------------------------------------


def test_checkpoint_holds_every_weight(model, tmp_path):
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    saved = {name: shape for name, shape in tf.train.list_variables(path)
             if name.startswith("model/") and name.endswith(".ATTRIBUTES/VARIABLE_VALUE")}
    assert len(saved) == len(model.weights)
    assert sum(int(np.prod(shape)) for shape in saved.values()) == model.count_params()
    assert any("local_classifier2" in name for name in saved)


def test_checkpoint_restores_embeddings(images, tmp_path):
    source = _model(seed=5)
    _train_batch_norm(source, images)
    path = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
    target = _model(seed=6)
    tf.train.Checkpoint(model=target).restore(path).assert_consumed()
    np.testing.assert_allclose(target.embed(images), source.embed(images), atol=1e-6)


def test_parameter_counts(model):
    # E^sl: conv1 7x7x3x8 = 1,176 + BN(8) 4 x 8 = 32 (gamma, beta, moving mean, moving variance);
    #   conv2: 2 basic blocks x (2 x 3x3x8x8 = 1,152 + 2 BN(8) = 64) = 2,432.  Total 3,640.
    # E^il: conv3 (16, stride 2): 3x3x8x16 1,152 + 3x3x16x16 2,304 + 1x1x8x16 shortcut 128 + 3 BN(16) 192
    #   = 3,776, block 2: 2 x 2,304 + 2 x 64 = 4,736 -> 8,512;
    #   conv4 (16, stride 2): 2,304 + 2,304 + 256 + 192 = 5,056 + 4,736 -> 9,792;
    #   conv5 (32, stride 1): 3x3x16x32 4,608 + 3x3x32x32 9,216 + 1x1x16x32 512 + 3 BN(32) 384 = 14,720,
    #   block 2: 2 x 9,216 + 2 x 128 = 18,688 -> 33,408.  Total 51,712.
    # Each classifier: BN(32) gamma 32 trainable + moving mean/variance 64 non-trainable (no beta);
    #   Dense 32 x 5 = 160 (no bias).  C + 3 local: 4 x (192 trainable + 64 non-trainable).
    assert model.set_level_encoder.count_params() == 3_640
    assert model.instance_level_encoder.count_params() == 51_712
    for classifier in (model.classifier, *model.local_classifiers):
        assert sum(int(np.prod(w.shape)) for w in classifier.trainable_weights) == 32 + 160
        assert sum(int(np.prod(w.shape)) for w in classifier.non_trainable_weights) == 64
    assert model.count_params() == 3_640 + 51_712 + 4 * (192 + 64)


# --- mixed precision ---------------------------------------------------------------


def test_mixed_bfloat16(images):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = _model()
        out = model(images, training=True)
        embeddings = model.embed(images)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out["feature_map"].dtype == tf.bfloat16
    for key in ("features", "bn_features", "logits"):
        assert out[key].dtype == tf.float32, key
    assert all(logits.dtype == tf.float32 for logits in out["local_logits"])
    assert embeddings.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-5)
    assert all(w.dtype == "float32" for w in model.weights)
    assert np.all(np.isfinite(out["logits"]))
