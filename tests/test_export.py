"""SavedModel export (jsia_tf.export): the reloaded signatures equal the Keras embedder (Eq. 17).

A tiny ResNet-18 module F (widths 8, 16, 16, 32: D = 32) exported for 32x16 inputs.
Tolerances: 1e-5 between the SavedModel and Keras (the same float32 ops, regrouped by
graph optimisation); 1e-6 between two signatures of one SavedModel.
"""

import io
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from jsia_tf import export, litert
from jsia_tf.data.pipeline import preprocess
from jsia_tf.models import alignment, backbone

HEIGHT, WIDTH = 32, 16
TINY_WIDTHS = (8, 16, 16, 32)
FEATURE_DIM = 32
NUM_CLASSES = 4
NUM_REGIONS = 2
# Batch-norm variables of the "bn" test feature: gamma, moving mean, moving variance (no beta).
CLASSIFIER_BN_VARIABLES = 3


def tiny_model(seed=0, **kwargs):
    """A built module F with random weights and non-trivial batch-norm statistics."""
    keras.utils.set_random_seed(seed)
    parts = backbone.build_backbone("resnet18", widths=TINY_WIDTHS)
    model = alignment.FeatureAlignment(parts.set_level_encoder, parts.instance_level_encoder, NUM_CLASSES,
                                       num_regions=NUM_REGIONS, **kwargs)
    model(np.zeros((1, HEIGHT, WIDTH, 3), np.float32))
    rng = np.random.default_rng(seed)
    batch_norm = model.classifier.batch_norm
    batch_norm.moving_mean.assign(rng.normal(size=FEATURE_DIM).astype(np.float32))
    batch_norm.moving_variance.assign(rng.uniform(0.5, 2.0, FEATURE_DIM).astype(np.float32))
    return model


def fitted_tiny_model(dataset, seed=0):
    """tiny_model with the BN-neck statistics of its pooled features on ``dataset``'s training
    images (a ``pipeline.load_dataset``), so that its test features spread as a trained one's."""
    model = tiny_model(seed)
    paths = np.concatenate([dataset.train_rgb.paths, dataset.train_ir.paths])
    images = preprocess(np.stack([litert.load_pixels(path, HEIGHT, WIDTH) for path in paths]), HEIGHT, WIDTH)
    features = tf.reduce_mean(model.instance_level_encoder(model.set_level_encoder(images)), axis=[1, 2]).numpy()
    model.classifier.batch_norm.moving_mean.assign(features.mean(axis=0))
    model.classifier.batch_norm.moving_variance.assign(features.var(axis=0))
    return model


def pixels(shape, seed=1):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def encode(image, fmt):
    """PNG/BMP bytes of uint8 [H, W, 3] or [H, W] (gray)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def saved_variables(version_dir):
    """{name: shape} of the variables stored in a SavedModel."""
    return {name: shape for name, shape in tf.train.list_variables(os.path.join(version_dir, "variables", "variables"))
            if name.endswith("VARIABLE_VALUE")}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def version_dir(model, tmp_path_factory):
    return export.export_embedder(model, str(tmp_path_factory.mktemp("models") / "jsia"), HEIGHT, WIDTH,
                                  metadata={"training_config_sha256": export.config_fingerprint({"seed": 0})})


@pytest.fixture(scope="module")
def loaded(version_dir):
    return tf.saved_model.load(version_dir)


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("size", [(32, 16), (40, 20), (64, 32)])
def test_uint8_signature_equals_keras(model, loaded, batch, size):
    images = pixels((batch, *size, 3), seed=batch)
    served = loaded.signatures["serving_default"](images=tf.constant(images))["embedding"].numpy()
    expected = model.embed(preprocess(images, HEIGHT, WIDTH)).numpy()
    assert served.shape == (batch, FEATURE_DIM) and served.dtype == np.float32
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("fmt", ["PNG", "BMP"])
def test_encoded_signature_equals_uint8_signature(loaded, fmt):
    images = [pixels((32, 16, 3), seed=2), pixels((50, 21, 3), seed=3), pixels((64, 32), seed=4)]  # last: gray
    served = loaded.signatures["embed_encoded"](image_bytes=tf.constant([encode(im, fmt) for im in images]))
    for image, embedding in zip(images, served["embedding"].numpy()):
        image = image if image.ndim == 3 else image[:, :, None]
        expected = loaded.signatures["serving_default"](images=tf.constant(image[None]))["embedding"].numpy()[0]
        np.testing.assert_allclose(embedding, expected, atol=1e-6)


def test_gray_input_equals_it_replicated_to_rgb(loaded):
    gray = pixels((2, 40, 20, 1), seed=5)
    embed = loaded.signatures["serving_default"]
    np.testing.assert_allclose(embed(images=tf.constant(gray))["embedding"],
                               embed(images=tf.constant(np.repeat(gray, 3, axis=-1)))["embedding"], atol=1e-6)


@pytest.mark.parametrize("images, message", [
    (np.zeros((1, 32, 16, 2), np.uint8), "expected 1 (gray) or 3 (RGB) channels, got shape] [1 32 16 2]"),
    (np.zeros((1, 32, 16, 4), np.uint8), "expected 1 (gray) or 3 (RGB) channels"),
    (np.zeros((0, 32, 16, 3), np.uint8), "the batch is empty"),
])
def test_uint8_signature_refuses_bad_images(loaded, images, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        loaded.signatures["serving_default"](images=tf.constant(images))


def test_encoded_signature_refuses_undecodable_bytes(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["embed_encoded"](image_bytes=tf.constant([encode(pixels((8, 4, 3)), "PNG"), b"not an image"]))


def test_only_the_embedding_path_is_saved(model, version_dir):
    variables = saved_variables(version_dir)
    encoders = model.set_level_encoder.weights + model.instance_level_encoder.weights
    assert len(variables) == len(encoders) + CLASSIFIER_BN_VARIABLES
    assert sum(int(np.prod(shape)) for shape in variables.values()) == (
        sum(int(np.prod(w.shape)) for w in encoders) + CLASSIFIER_BN_VARIABLES * FEATURE_DIM)
    # No classifier kernel [D, num_classes] (of C or the local C^k), nothing else of F.
    assert [FEATURE_DIM, NUM_CLASSES] not in variables.values()
    assert all(name.split("/")[0] in ("set_level_encoder", "instance_level_encoder", "batch_norm")
               for name in variables)


@pytest.mark.parametrize("options", [{"test_features": "pool"}, {"gray_input": True}])
def test_other_test_features_equal_keras(tmp_path, options):
    model = tiny_model(seed=3, **options)
    version_dir = export.export_embedder(model, str(tmp_path), HEIGHT, WIDTH)
    images = pixels((3, 40, 20, 3), seed=6)
    served = tf.saved_model.load(version_dir).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["embedding"], model.embed(preprocess(images, HEIGHT, WIDTH)), atol=1e-5)
    bn_variables = 0 if options.get("test_features") == "pool" else CLASSIFIER_BN_VARIABLES
    encoders = model.set_level_encoder.weights + model.instance_level_encoder.weights
    assert len(saved_variables(version_dir)) == len(encoders) + bn_variables


def test_metadata_signature_equals_the_asset(loaded, version_dir):
    document = json.loads(loaded.signatures["metadata"]()["metadata_json"].numpy())
    with open(os.path.join(version_dir, "assets", export.METADATA_ASSET)) as f:
        assert json.load(f) == document
    assert document["embedding_dim"] == FEATURE_DIM
    assert (document["input_height"], document["input_width"]) == (HEIGHT, WIDTH)
    assert document["model_version"] == 1 and "caffe" in document["preprocessing"]
    assert document["training_config_sha256"] == export.config_fingerprint({"seed": 0})
    assert document["signatures"] == ["serving_default", "embed_encoded", "metadata"]


def test_config_fingerprint_ignores_key_order():
    assert export.config_fingerprint({"a": 1, "b": [2]}) == export.config_fingerprint({"b": [2], "a": 1})
    assert export.config_fingerprint({"a": 1}) != export.config_fingerprint({"a": 2})


def test_versions_increment(model, tmp_path):
    base = str(tmp_path / "jsia")
    os.makedirs(os.path.join(base, "notes"))  # not a version
    assert export.export_embedder(model, base, HEIGHT, WIDTH) == os.path.join(base, "1")
    assert export.export_embedder(model, base, HEIGHT, WIDTH) == os.path.join(base, "2")
    assert export.export_embedder(model, base, HEIGHT, WIDTH, version=7) == os.path.join(base, "7")
    assert export.next_version(base) == 8
    with pytest.raises(FileExistsError, match="exists"):
        export.export_embedder(model, base, HEIGHT, WIDTH, version=2)
    assert sorted(os.listdir(base)) == ["1", "2", "7", "notes"]  # no staging folder left behind


def test_bad_arguments_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match="version=0"):
        export.export_embedder(model, str(tmp_path), HEIGHT, WIDTH, version=0)
    with pytest.raises(ValueError, match="height"):
        export.export_embedder(model, str(tmp_path), 0, WIDTH)
    with pytest.raises(ValueError, match="embedding_dim"):
        export.export_embedder(model, str(tmp_path), HEIGHT, WIDTH, metadata={"embedding_dim": 1})
    assert os.listdir(tmp_path) == []


def test_saved_model_cli_lists_the_signatures(version_dir):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run([cli, "show", "--all", "--dir", version_dir], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    for text in ("signature_def['serving_default']", "signature_def['embed_encoded']", "signature_def['metadata']",
                 "inputs['images'] tensor_info:", "dtype: DT_UINT8", "shape: (-1, -1, -1, -1)",
                 "inputs['image_bytes'] tensor_info:", "dtype: DT_STRING", "outputs['embedding'] tensor_info:",
                 f"shape: (-1, {FEATURE_DIM})", "outputs['metadata_json'] tensor_info:"):
        assert text in result.stdout, text


def test_signatures_refuse_images_above_max_pixels_naming_the_item_and_the_limit(model, tmp_path):
    """An image above the export's max_pixels, or an item that is no image, is InvalidArgument
    naming its index; the encoded one is refused from its header (never decoded)."""
    loaded = tf.saved_model.load(export.export_embedder(model, str(tmp_path), HEIGHT, WIDTH, max_pixels=40 * 20))
    assert json.loads(loaded.signatures["metadata"]()["metadata_json"].numpy())["max_pixels"] == 40 * 20
    small = pixels((40, 20, 3))
    encoded = loaded.signatures["embed_encoded"]
    for fmt in ("PNG", "BMP", "JPEG", "GIF"):
        assert encoded(image_bytes=tf.constant([encode(small, fmt)]))["embedding"].shape == (1, FEATURE_DIM)
        too_large = encode(pixels((41, 20, 3)), fmt)
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=re.escape("image_bytes[1]: 41x20 = 820 pixels, above the limit of 800 pixels")):
            encoded(image_bytes=tf.constant([encode(small, fmt), too_large]))
    # A header that claims 8000 x 8000 is refused before the missing pixels are decoded.
    header = encode(small, "PNG")[:16] + (8000).to_bytes(4, "big") * 2
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape("image_bytes[0]: 8000x8000 = 64000000")):
        encoded(image_bytes=tf.constant([header]))
    for junk in (b"not an image", b""):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=re.escape("image_bytes[2]: not a BMP, GIF, JPEG or PNG file")):
            encoded(image_bytes=tf.constant([encode(small, "PNG")] * 2 + [junk]))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=re.escape("images (each of 2 items): 41x20 = 820 pixels, above the limit of 800")):
        loaded.signatures["serving_default"](images=tf.constant(pixels((2, 41, 20, 3))))
