"""tf.data pipeline: shared preprocessing, augmentation, identity sampler, batches."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import HEIGHT, PIXEL_STEP, WIDTH
from jsia_tf.data import pipeline

NO_AUGMENT = pipeline.AugmentConfig(flip=False, pad=0, random_erasing=0.0, channel_aug=0.0)


def _seed(i):
    return tf.constant([3, i], tf.int64)


# --- preprocessing -------------------------------------------------------------------


def test_normalize_matches_keras_resnet50_preprocess_input():
    pixels = np.random.default_rng(0).uniform(0, 255, size=(2, 5, 4, 3)).astype(np.float32)
    expected = keras.applications.resnet50.preprocess_input(pixels.copy())
    np.testing.assert_allclose(pipeline.normalize(pixels).numpy(), expected, atol=1e-5)
    # One pixel by hand: RGB (10, 20, 30) -> BGR minus mean.
    np.testing.assert_allclose(pipeline.normalize(tf.constant([[10.0, 20.0, 30.0]])).numpy(),
                               [[30 - 103.939, 20 - 116.779, 10 - 123.68]], atol=1e-4)


def test_denormalize_inverts_normalize_exactly():
    pixels = np.random.default_rng(1).integers(0, 256, size=(3, 6, 5, 3), dtype=np.uint8)
    restored = pipeline.denormalize(pipeline.normalize(tf.cast(pixels, tf.float32)))
    assert restored.dtype == tf.uint8
    np.testing.assert_array_equal(restored.numpy(), pixels)


def test_preprocess_gray_equals_replicated_rgb_and_keeps_size_exactly():
    gray = np.random.default_rng(2).integers(0, 256, size=(2, HEIGHT, WIDTH, 1), dtype=np.uint8)
    rgb = np.repeat(gray, 3, axis=-1)
    for height, width in ((HEIGHT, WIDTH), (16, 8), (48, 24)):
        out = pipeline.preprocess(gray, height, width)
        assert out.shape == (2, height, width, 3) and out.dtype == tf.float32
        np.testing.assert_array_equal(out.numpy(), pipeline.preprocess(rgb, height, width).numpy())
    # Resizing to the input size is the identity; rank 3 and float input work too.
    np.testing.assert_allclose(pipeline.preprocess(rgb[0].astype(np.float32), HEIGHT, WIDTH).numpy(),
                               pipeline.normalize(rgb[0].astype(np.float32)).numpy(), atol=1e-4)


def test_preprocess_resizes_bilinear():
    # A constant image stays constant; a horizontal ramp stays monotone with the same mean.
    constant = np.full((40, 20, 3), 77, np.uint8)
    np.testing.assert_allclose(pipeline.denormalize(pipeline.preprocess(constant, 16, 8)).numpy(), 77)
    ramp = np.tile(np.arange(20, dtype=np.float32)[None, :, None] * 10, (8, 1, 3))
    red = pipeline.denormalize(pipeline.preprocess(ramp, 8, 10)).numpy()[0, :, 0].astype(float)
    assert np.all(np.diff(red) > 0)
    assert abs(red.mean() - ramp[0, :, 0].mean()) < 1.0


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        pipeline.preprocess(np.zeros((4, 4, 2), np.uint8), 4, 4)
    with pytest.raises(TypeError, match="uint8 or float"):
        pipeline.preprocess(np.zeros((4, 4, 3), np.int32), 4, 4)


def test_decode_gray_bmp_gives_three_equal_channels(regdb_root):
    image = pipeline.decode_image(os.path.join(regdb_root, "Thermal", "2", "t_3.bmp")).numpy()
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, PIXEL_STEP * 2 + 3)


# --- augmentation --------------------------------------------------------------------


def test_augment_config_validation():
    with pytest.raises(ValueError, match="pad"):
        pipeline.AugmentConfig(pad=-1)
    with pytest.raises(ValueError, match="random_erasing"):
        pipeline.AugmentConfig(random_erasing=1.5)
    with pytest.raises(ValueError, match="channel_aug"):
        pipeline.AugmentConfig(channel_aug=-0.1)


def test_random_erasing_erases_one_rectangle_of_the_zhong_size():
    image = tf.ones([HEIGHT, WIDTH, 3])
    erased_count = 0
    for i in range(40):
        out = pipeline.random_erasing(image, 1.0, _seed(i)).numpy()
        zero = out[:, :, 0] == 0
        np.testing.assert_array_equal(out[zero], 0)
        np.testing.assert_array_equal(out[~zero], 1)
        if not zero.any():
            continue  # no attempt fit: kept, as in Zhong et al.
        erased_count += 1
        rows, cols = np.flatnonzero(zero.any(axis=1)), np.flatnonzero(zero.any(axis=0))
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert zero.sum() == h * w  # one full rectangle, all channels
        assert h < HEIGHT and w < WIDTH
        # h, w = round(sqrt(area * aspect)), round(sqrt(area / aspect)), area in [0.02, 0.4] of
        # the image: h * w = area up to the rounding, at most (h + w + 1) / 2 + 1/4.
        rounding = (h + w + 1) / 2 + 0.25
        assert 0.02 * HEIGHT * WIDTH - rounding <= h * w <= 0.4 * HEIGHT * WIDTH + rounding
    assert erased_count >= 35
    np.testing.assert_array_equal(pipeline.random_erasing(image, 0.0, _seed(0)).numpy(), 1)
    applied = [bool((pipeline.random_erasing(image, 0.5, _seed(i)).numpy() == 0).any()) for i in range(200)]
    assert 0.35 < np.mean(applied) < 0.65


def test_channel_augment_gives_a_gray_image_from_one_channel_or_luminance():
    pixels = np.random.default_rng(3).uniform(0, 255, size=(HEIGHT, WIDTH, 3)).astype(np.float32)  # RGB
    candidates = [pixels[..., 0], pixels[..., 1], pixels[..., 2],
                  0.2989 * pixels[..., 0] + 0.5870 * pixels[..., 1] + 0.1140 * pixels[..., 2]]
    image = pipeline.normalize(pixels)
    seen = set()
    for i in range(30):
        out = (pipeline.channel_augment(image, 1.0, _seed(i)) + pipeline.CAFFE_MEAN_BGR).numpy()
        np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-3)
        np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-3)
        matches = [k for k, gray in enumerate(candidates) if np.allclose(out[..., 0], gray, atol=1e-2)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}
    np.testing.assert_array_equal(pipeline.channel_augment(image, 0.0, _seed(0)).numpy(), image.numpy())


def test_intensity_augment_inverts_or_not_then_applies_one_gamma():
    """Each output pixel is 255 (p / 255)^g or 255 (1 - p / 255)^g with one g in [1/2, 2] per
    image; both polarities occur; probability 0 leaves the image alone."""
    pixels = np.random.default_rng(5).uniform(1, 254, size=(HEIGHT, WIDTH, 3)).astype(np.float32)
    image = pipeline.normalize(pixels)
    bgr = pixels[..., ::-1] / 255.0
    polarities, gammas = set(), []
    for i in range(40):
        out = (pipeline.intensity_augment(image, 1.0, _seed(i)) + pipeline.CAFFE_MEAN_BGR).numpy() / 255.0
        for inverted, base in ((False, bgr), (True, 1.0 - bgr)):
            gamma = np.log(out) / np.log(base)  # the same exponent for every pixel
            if np.allclose(gamma, gamma.mean(), rtol=1e-3, atol=1e-3):
                polarities.add(inverted)
                gammas.append(float(gamma.mean()))
                break
        else:
            raise AssertionError(f"seed {i}: not a gamma of the image or of its inverse")
    assert polarities == {False, True}
    assert 0.5 - 1e-3 <= min(gammas) and max(gammas) <= 2.0 + 1e-3 and min(gammas) < 0.8 and max(gammas) > 1.3
    np.testing.assert_array_equal(pipeline.intensity_augment(image, 0.0, _seed(0)).numpy(), image.numpy())
    # In augment_image it draws from its own stream: the other augmentations are unchanged.
    plain = pipeline.AugmentConfig(pad=4, random_erasing=0.5)
    both = pipeline.AugmentConfig(pad=4, random_erasing=0.5, intensity_aug=1e-9)
    for i in range(5):
        np.testing.assert_array_equal(pipeline.augment_image(image, plain, _seed(i), rgb=True).numpy(),
                                      pipeline.augment_image(image, both, _seed(i), rgb=True).numpy())


def test_flip_and_pad_crop():
    pixels = np.random.default_rng(4).uniform(0, 255, size=(HEIGHT, WIDTH, 3)).astype(np.float32)
    image = pipeline.normalize(pixels)
    flips = [pipeline.augment_image(image, pipeline.AugmentConfig(pad=0, random_erasing=0.0), _seed(i), rgb=True)
             .numpy() for i in range(20)]
    mirrored = [np.array_equal(out, image.numpy()[:, ::-1]) for out in flips]
    assert all(m or np.array_equal(out, image.numpy()) for m, out in zip(mirrored, flips))
    assert 0 < sum(mirrored) < 20
    # Pad with black then crop: the output is the black-padded image seen through a window.
    padded = np.pad(pixels, ((10, 10), (10, 10), (0, 0)))
    config = pipeline.AugmentConfig(flip=False, pad=10, random_erasing=0.0)
    offsets = set()
    for i in range(10):
        out = pipeline.denormalize(pipeline.augment_image(image, config, _seed(i), rgb=True)).numpy()
        window = [(y, x) for y in range(21) for x in range(21)
                  if np.array_equal(out, np.round(padded[y:y + HEIGHT, x:x + WIDTH]).astype(np.uint8))]
        assert len(window) == 1
        offsets.add(window[0])
    assert len(offsets) > 1


def test_augment_image_is_a_function_of_the_seed():
    image = pipeline.normalize(tf.random.stateless_uniform([HEIGHT, WIDTH, 3], [0, 0], 0, 255))
    config = pipeline.AugmentConfig(channel_aug=0.5)
    a = pipeline.augment_image(image, config, _seed(5), rgb=True).numpy()
    np.testing.assert_array_equal(a, pipeline.augment_image(image, config, _seed(5), rgb=True).numpy())
    assert not all(np.array_equal(a, pipeline.augment_image(image, config, _seed(i), rgb=True).numpy())
                   for i in range(6, 10))


# --- identity sampler ----------------------------------------------------------------


def test_sampler_epochs_are_permutations_and_draws_follow_k():
    # Class 0 has 2 RGB images (< K = 3: with replacement); others have 5 (without).
    rgb_labels = np.array([0, 0] + [c for c in range(1, 6) for _ in range(5)])
    ir_labels = np.array([c for c in range(6) for _ in range(4)])
    sampler = iter(pipeline.IdentitySampler(rgb_labels, ir_labels, 6, num_ids=2, num_instances=3, seed=0))
    for _ in range(4):  # 4 epochs of 3 batches
        epoch = [next(sampler) for _ in range(3)]
        classes = np.concatenate([labels[::3] for _, _, labels in epoch])
        assert sorted(classes.tolist()) == list(range(6))
        for rgb_index, ir_index, labels in epoch:
            assert labels.tolist() == np.repeat(labels[::3], 3).tolist()
            np.testing.assert_array_equal(rgb_labels[rgb_index], labels)
            np.testing.assert_array_equal(ir_labels[ir_index], labels)
            for block in range(2):
                part = slice(3 * block, 3 * block + 3)
                if labels[part][0] != 0:
                    assert len(set(rgb_index[part].tolist())) == 3
                assert len(set(ir_index[part].tolist())) == 3


def test_sampler_drops_incomplete_batch_and_validates():
    labels = np.arange(5)
    batch = next(iter(pipeline.IdentitySampler(labels, labels, 5, num_ids=2, num_instances=1, seed=1)))
    assert len(set(batch[2].tolist())) == 2
    with pytest.raises(ValueError, match="at least 6 classes"):
        pipeline.IdentitySampler(labels, labels, 5, num_ids=6, num_instances=1, seed=1)
    with pytest.raises(ValueError, match=r"classes \[4\] have no IR images"):
        pipeline.IdentitySampler(labels, labels[:4], 5, num_ids=2, num_instances=1, seed=1)


# --- datasets ------------------------------------------------------------------------


def test_train_batches_align_rgb_and_ir_identities(regdb_root):
    dataset = pipeline.load_dataset("regdb", regdb_root)  # 3 training ids, 4 images each
    num_ids, k = 2, 5  # K > 4: drawn with replacement
    for batch in pipeline.train_dataset(dataset, num_ids, k, HEIGHT, WIDTH, seed=0, augment=NO_AUGMENT).take(4):
        labels = batch["rgb_labels"].numpy()
        assert batch["rgb"].shape == batch["ir"].shape == (num_ids * k, HEIGHT, WIDTH, 3)
        assert batch["rgb"].dtype == tf.float32 and batch["rgb_labels"].dtype == tf.int32
        np.testing.assert_array_equal(labels, batch["ir_labels"].numpy())
        assert len(set(labels.tolist())) == num_ids
        np.testing.assert_array_equal(labels, np.repeat(labels[::k], k))  # id-major blocks
        assert labels.min() >= 0 and labels.max() < dataset.num_classes
        # The pixels say which person each image shows: v = 16 * pid + n.
        rgb = pipeline.denormalize(batch["rgb"]).numpy().astype(int)
        ir = pipeline.denormalize(batch["ir"]).numpy().astype(int)
        np.testing.assert_array_equal(rgb[:, 0, 0, 0] // PIXEL_STEP, dataset.train_pids[labels])
        np.testing.assert_array_equal(ir[:, 0, 0, 0] // PIXEL_STEP, dataset.train_pids[labels])
        np.testing.assert_array_equal(rgb[..., 1], 255 - rgb[..., 0])  # RGB images are (v, 255 - v, 40)
        np.testing.assert_array_equal(ir[..., 1], ir[..., 0])  # IR images are gray


def _take(dataset, seed, count=3, **kwargs):
    batches = pipeline.train_dataset(dataset, 2, 2, HEIGHT, WIDTH, seed=seed, **kwargs).take(count)
    return [{key: value.numpy() for key, value in batch.items()} for batch in batches]


def test_train_stream_is_reproducible_by_seed(regdb_root):
    dataset = pipeline.load_dataset("regdb", regdb_root)
    augment = pipeline.AugmentConfig(random_erasing=0.5, channel_aug=0.5)
    first, again, other = (_take(dataset, seed, augment=augment) for seed in (11, 11, 12))
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["rgb"], c["rgb"]) for a, c in zip(first, other))


def test_train_stream_resumes_where_it_stopped(regdb_root):
    dataset = pipeline.load_dataset("regdb", regdb_root)
    uninterrupted = _take(dataset, 5, count=4)
    resumed = _take(dataset, 5, count=2, start_batch=2)
    for a, b in zip(uninterrupted[2:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_eval_dataset_keeps_list_order(sysu_root):
    dataset = pipeline.load_dataset("sysu", sysu_root)
    batches = list(pipeline.eval_dataset(dataset.test, 16, 8, batch_size=4))
    assert [len(batch) for batch in batches] == [4] * 5 + [1]  # 21 test images, last batch kept
    images = np.concatenate([batch.numpy() for batch in batches])
    for i in (0, 7, 20):
        np.testing.assert_array_equal(images[i], pipeline.load_image(dataset.test.paths[i], 16, 8).numpy())
    # JPEG flat colours decode within a few levels: the first channel still gives v = 16 * pid + n.
    red = pipeline.denormalize(images).numpy()[:, 4, 4, 0].astype(int)
    assert np.all(np.abs(red - (PIXEL_STEP * dataset.test.pids + dataset.test.image_index)) <= 3)


def test_replica_shards_put_together_are_the_one_device_stream(regdb_root):
    """Two workers with one replica each: each reads its own identities, with the
    augmentation of the unsplit stream (the same pixels), RGB and IR aligned."""
    dataset = pipeline.load_dataset("regdb", regdb_root)
    augment = pipeline.AugmentConfig(random_erasing=0.5, channel_aug=0.5)
    whole = _take(dataset, 4, augment=augment, start_batch=1)
    shards = [_take(dataset, 4, augment=augment, start_batch=1, num_replicas=2, replica_ids=[r]) for r in (0, 1)]
    for step, batch in enumerate(whole):
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([shard[step][key] for shard in shards]), batch[key])
        for shard in shards:
            labels = shard[step]["rgb_labels"]
            assert len(labels) == 2 and len(set(labels.tolist())) == 1  # one whole identity x K = 2
            np.testing.assert_array_equal(labels, shard[step]["ir_labels"])


def test_replica_split_needs_whole_identities(regdb_root):
    dataset = pipeline.load_dataset("regdb", regdb_root)
    with pytest.raises(ValueError, match=r"num_ids=3 .* expected a multiple of 2"):
        pipeline.train_dataset(dataset, 3, 2, HEIGHT, WIDTH, seed=0, num_replicas=2)
    with pytest.raises(ValueError, match=r"replica_ids=\(2,\): expected ids in \[0, 2\)"):
        pipeline.train_dataset(dataset, 2, 2, HEIGHT, WIDTH, seed=0, num_replicas=2, replica_ids=[2])


_DISTRIBUTED_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from jsia_tf.data import pipeline
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
dataset = pipeline.load_dataset("regdb", sys.argv[1])
whole = next(iter(pipeline.train_dataset(dataset, 2, 3, 32, 16, seed=7)))
# As distribute.training_batches does: one input pipeline, its per-replica batches in turn.
distributed = strategy.distribute_datasets_from_function(
    lambda context: pipeline.train_dataset(dataset, 2, 3, 32, 16, seed=7, num_replicas=2))
local = {key: [t.numpy() for t in strategy.experimental_local_results(value)]
         for key, value in next(iter(distributed)).items()}
print(json.dumps({
    "whole_labels": whole["rgb_labels"].numpy().tolist(),
    "rgb_labels": [t.tolist() for t in local["rgb_labels"]],
    "ir_labels": [t.tolist() for t in local["ir_labels"]],
    "images_equal": all(np.array_equal(np.concatenate(local[key]), whole[key].numpy()) for key in ("rgb", "ir")),
}))
"""



def test_mirrored_strategy_splits_batches_with_modalities_aligned(regdb_root):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", _DISTRIBUTED_SCRIPT, regdb_root], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": repo})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["images_equal"]
    assert out["rgb_labels"] == out["ir_labels"]
    assert [len(labels) for labels in out["rgb_labels"]] == [3, 3]  # one identity x K=3 per replica
    assert sum(out["rgb_labels"], []) == out["whole_labels"]
    assert all(len(set(labels)) == 1 for labels in out["rgb_labels"])


def test_generation_batches_keep_the_colours_that_channel_augmentation_takes(regdb_root):
    """pipeline.training_streams: module G's batches get the geometric augmentation only.

    With --channel_aug=1 every re-ID RGB image is one channel repeated; the generation
    batch's RGB images keep their colours, and are the very images (same draws, same flips
    and crops) that --channel_aug=0 gives.
    """
    from jsia_tf import config as config_lib

    dataset = pipeline.load_dataset("regdb", regdb_root)

    def first_batches(channel_aug):
        data = config_lib.DataConfig(data_dir=regdb_root, dataset="regdb", height=HEIGHT, width=WIDTH, num_ids=2,
                                     num_instances=2, gan_num_ids=2, gan_num_instances=2, channel_aug=channel_aug)
        reid, gan = next(iter(pipeline.training_streams(dataset, data)))
        return pipeline.denormalize(reid["rgb"]).numpy(), pipeline.denormalize(gan["rgb"]).numpy()

    def gray(pixels):
        return np.allclose(pixels[..., :1], pixels, atol=1e-3)

    reid, gan = first_batches(1.0)
    reid_plain, gan_plain = first_batches(0.0)
    assert gray(reid) and not gray(reid_plain)
    assert not gray(gan)
    np.testing.assert_array_equal(gan, gan_plain)
