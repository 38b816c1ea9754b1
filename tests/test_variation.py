"""Module V (Sec. 3.2, Eq. 9) and the unseen-identity mixing of Eq. 14, at tiny sizes."""

import os

import numpy as np
import pytest
import tensorflow as tf

from jsia_tf import config
from jsia_tf.models import variation

# Tiny V over content maps [B, 8, 4, 16] (E^sl output of 32x16 images at C = 16).
TINY = dict(feature_channels=16, hidden_channels=8, latent_channels=4, num_downsample=1)


def _maps(seed=0, batch=3):
    return tf.constant(np.random.default_rng(seed).uniform(0.0, 2.0, size=(batch, 8, 4, 16)).astype(np.float32))


def test_latent_is_spatial_and_decode_restores_the_map_shape():
    vae = variation.VariationModule(**TINY, seed=0)
    maps = _maps()
    z, u, tau = vae(maps, training=True)
    assert tuple(z.shape) == tuple(u.shape) == tuple(tau.shape) == (3, 4, 2, 4)  # [B, h/2, w/2, Z]
    assert vae.decode(z).shape == maps.shape
    two_down = variation.VariationModule(**{**TINY, "num_downsample": 2})
    z2, _, _ = two_down(tf.concat([maps, maps], axis=1))  # [3, 16, 4, 16] -> latent [3, 4, 1, 4]
    assert tuple(z2.shape) == (3, 4, 1, 4)


def test_inference_is_deterministic_and_returns_the_mean():
    vae = variation.VariationModule(**TINY, seed=0)
    maps = _maps()
    z, u, _ = vae(maps)  # training=None: inference
    np.testing.assert_array_equal(z, u)
    z_again, _, _ = vae(maps, training=False)
    np.testing.assert_array_equal(z_again, z)


def test_training_samples_differ_between_calls_and_follow_the_seed():
    maps = _maps()
    first = variation.VariationModule(**TINY, seed=7)
    second = variation.VariationModule(**TINY, seed=7)
    first.build(maps.shape)
    second.build(maps.shape)
    second.set_weights(first.get_weights())
    draws_first = [first(maps, training=True)[0].numpy() for _ in range(2)]
    draws_second = [second(maps, training=True)[0].numpy() for _ in range(2)]
    assert np.abs(draws_first[0] - draws_first[1]).max() > 1e-3  # fresh noise each call
    np.testing.assert_array_equal(draws_first[0], draws_second[0])  # same seed, same stream
    np.testing.assert_array_equal(draws_first[1], draws_second[1])
    other_seed = variation.VariationModule(**TINY, seed=8)
    other_seed.build(maps.shape)
    other_seed.set_weights(first.get_weights())
    assert np.abs(other_seed(maps, training=True)[0].numpy() - draws_first[0]).max() > 1e-3


def test_reparameterisation_noise_is_standard_normal():
    vae = variation.VariationModule(**TINY, seed=3)
    maps = _maps(batch=64)
    z, u, tau = vae(maps, training=True)
    eps = ((z - u) / tau).numpy()  # 64 x 4 x 2 x 4 = 2048 draws
    assert abs(eps.mean()) < 0.1 and abs(eps.std() - 1.0) < 0.1


def test_std_head_is_positive_with_a_floor():
    vae = variation.VariationModule(**TINY, min_std=1e-4)
    maps = _maps()
    vae.build(maps.shape)
    _, _, tau = vae(maps)
    assert np.all(tau.numpy() > 1e-4)
    vae.std_head.conv.bias.assign(np.full((4,), -100.0, np.float32))  # softplus(-100 + ...) ~ 0
    vae.std_head.conv.kernel.assign(tf.zeros_like(vae.std_head.conv.kernel))
    _, _, tau = vae(maps)
    np.testing.assert_allclose(tau, 1e-4, rtol=1e-3)
    vae.std_head.conv.bias.assign(np.full((4,), 3.0, np.float32))
    _, _, tau = vae(maps)
    np.testing.assert_allclose(tau, np.log1p(np.exp(3.0)) + 1e-4, rtol=1e-5)


def test_gradients_flow_through_the_sample_to_both_heads():
    vae = variation.VariationModule(**TINY, seed=1)
    maps = _maps()
    vae.build(maps.shape)
    heads = [vae.mean_head.conv.kernel, vae.std_head.conv.kernel]
    with tf.GradientTape(persistent=True) as tape:
        z, _, _ = vae(maps, training=True)
        reconstruction_loss = tf.reduce_mean(tf.abs(maps - vae.decode(z)))  # Eq. 10, first term
        z_inference, _, _ = vae(maps, training=False)
        inference_loss = tf.reduce_sum(z_inference)
    mean_grad, std_grad = tape.gradient(reconstruction_loss, heads)
    assert np.any(mean_grad.numpy() != 0) and np.any(std_grad.numpy() != 0)
    grads = tape.gradient(reconstruction_loss, vae.trainable_variables)
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)
    # At inference z = u: the std head is off the path.
    mean_grad, std_grad = tape.gradient(inference_loss, heads)
    assert mean_grad is not None and std_grad is None


@pytest.mark.parametrize("shape", [(3, 5), (3, 4, 2, 6)])
def test_mix_interpolates_per_sample(shape):
    rng = np.random.default_rng(4)
    a = rng.normal(size=shape).astype(np.float32)
    b = rng.normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(variation.mix(a, b, np.ones(3, np.float32)), a)
    np.testing.assert_allclose(variation.mix(a, b, np.zeros(3, np.float32)), b)
    alpha = np.array([1.0, 0.25, 0.0], np.float32)
    mixed = variation.mix(a, b, alpha).numpy()
    np.testing.assert_allclose(mixed[0], a[0])
    np.testing.assert_allclose(mixed[1], 0.25 * a[1] + 0.75 * b[1], rtol=1e-6)
    np.testing.assert_allclose(mixed[2], b[2])
    np.testing.assert_allclose(variation.mix(a, b, 0.5), (a + b) / 2, rtol=1e-6)  # a scalar alpha for all


def test_default_parameter_count():
    paper = config.ModelConfig()
    vae = variation.VariationModule(paper.content_channels, paper.variation_hidden_channels,
                                    paper.variation_latent_channels, paper.variation_num_downsample)
    vae.build((None, None, None, 256))
    # trunk 3x3 256->256, 4x4/2 256->256; heads 1x1 256->64 (x2); decoder 3x3 64->256,
    # 3x3 256->256, 3x3 256->256.
    assert vae.count_params() == 590_080 + 1_048_832 + 2 * 16_448 + 147_712 + 590_080 + 590_080


def test_config_round_trip_and_checkpoint_holds_every_weight(tmp_path):
    vae = variation.VariationModule(**TINY, output_activation="relu", seed=5)
    vae.build((None, None, None, 16))
    clone = variation.VariationModule.from_config(vae.get_config())
    clone.build((None, None, None, 16))
    assert clone.count_params() == vae.count_params()
    assert clone.get_config() == {**vae.get_config(), "name": clone.name}
    assert vae.decode(vae(_maps())[0]).numpy().min() >= 0.0  # relu output
    path = tf.train.Checkpoint(model=vae).write(os.path.join(tmp_path, "ckpt"))
    names = [name for name, _ in tf.train.list_variables(path) if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert len(names) == len(vae.weights) == 2 * 7
    with pytest.raises(ValueError, match="16-channel"):
        variation.VariationModule(**TINY)(tf.zeros((1, 8, 4, 8)))


def test_under_mixed_bfloat16(mixed_bfloat16):
    vae = variation.VariationModule(**TINY, seed=2)
    maps = _maps()
    z, u, tau = vae(maps, training=True)
    reconstruction = vae.decode(z)
    assert all(t.dtype == tf.float32 for t in (z, u, tau, reconstruction))
    assert vae.encoder_conv.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in vae.weights)
    assert np.all(np.isfinite(reconstruction.numpy())) and np.all(tau.numpy() > 0)
