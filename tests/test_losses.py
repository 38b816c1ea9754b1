"""Values, invariants and gradient routing of jsia_tf.losses (paper Eqs. 4-16, Table 3 ablations)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from jsia_tf import losses

LN3 = math.log(3.0)


def _close(actual, expected, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, dtype=np.float64), rtol=1e-5, atol=atol)


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


# Eqs. 4-5 -----------------------------------------------------------------------------

def test_l1_is_mean_absolute_error_per_example():
    x = tf.constant([[1.0, -2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 8.0]])
    y = tf.zeros_like(x)
    _close(losses.l1_per_example(tf.reshape(x, [2, 2, 2, 1]), tf.reshape(y, [2, 2, 2, 1])), [2.5, 2.0])


def test_losses_are_float32_for_bfloat16_inputs():
    x = tf.constant([[0.5, 1.5]], tf.bfloat16)
    assert losses.l1_per_example(x, tf.zeros_like(x)).dtype == tf.float32
    assert losses.lsgan_generator_loss([x]).dtype == tf.float32
    assert losses.label_smoothed_cross_entropy(tf.constant([1]), x).dtype == tf.float32
    assert losses.cross_modal_triplet_loss(x, x, tf.constant([0]), tf.constant([0])).dtype == tf.float32
    assert losses.instance_alignment_loss(x, x, x, x).dtype == tf.float32
    h = tf.constant([0.5, 1.5], tf.float16)
    assert losses.lsgan_modality_discriminator_loss(h, h).dtype == tf.float32
    assert losses.lsgan_modality_confusion_loss(h).dtype == tf.float32


# Eq. 7 (LSGAN) --------------------------------------------------------------------------

FAKE = [tf.reshape(tf.constant([[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]), [2, 2, 2, 1]),  # scale 1
        tf.reshape(tf.constant([0.0, 3.0]), [2, 1, 1, 1])]  # scale 2
REAL = [tf.reshape(tf.constant([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]), [2, 2, 2, 1]),
        tf.reshape(tf.constant([2.0, 1.0]), [2, 1, 1, 1])]


def test_lsgan_generator_loss_hand_computed():
    # example 0: mean((0-1)^2, 0, 1, 0) = 0.5 at scale 1, (0-1)^2 = 1 at scale 2
    # example 1: 0 at scale 1, (3-1)^2 = 4 at scale 2
    _close(losses.lsgan_generator_loss(FAKE), [1.5, 4.0])


def test_lsgan_discriminator_loss_hand_computed():
    # example 0: fake^2 0.5 + (real-1)^2 0 (scale 1); fake^2 0 + (2-1)^2 1 (scale 2)
    # example 1: fake^2 1 + (0-1)^2 1 (scale 1); 3^2 9 + 0 (scale 2)
    _close(losses.lsgan_discriminator_loss(REAL, FAKE), [1.5, 11.0])


def test_lsgan_optima_are_zero():
    ones, zeros = [tf.ones([3, 4, 2, 1]), tf.ones([3, 2, 1, 1])], [tf.zeros([3, 4, 2, 1]), tf.zeros([3, 2, 1, 1])]
    _close(losses.lsgan_discriminator_loss(real_outputs=ones, fake_outputs=zeros), np.zeros(3))
    _close(losses.lsgan_generator_loss(ones), np.zeros(3))


def test_lsgan_discriminator_loss_rejects_scale_mismatch():
    with pytest.raises(ValueError, match="scales"):
        losses.lsgan_discriminator_loss(REAL, FAKE[:1])


# Eq. 10 ---------------------------------------------------------------------------------

def test_variation_loss_is_zero_at_optimum_with_finite_gradients():
    m = tf.random.stateless_normal([2, 3, 2, 4], seed=[1, 2])
    mu, tau = tf.zeros([2, 5]), tf.ones([2, 5])
    for distribution in losses.VARIATION_DISTRIBUTIONS:
        with tf.GradientTape() as tape:
            tape.watch([mu, tau])
            value = losses.variation_loss(m, m, mu, tau, distribution=distribution)
        _close(value, [0.0, 0.0])
        for grad in tape.gradient(value, [mu, tau]):
            assert np.all(np.isfinite(grad.numpy()))


def test_variation_loss_paper_hand_computed():
    m, m_recon = tf.constant([[1.0, 2.0, 3.0, 4.0]]), tf.constant([[1.0, 2.0, 3.0, 0.0]])
    mu, tau = tf.constant([[3.0, 4.0]]), tf.constant([[1.0, 3.0]])
    # L1: 4 / 4 elements = 1; ||mu||_2 / sqrt(2) = sqrt(25 / 2); ||tau - 1||_2 / sqrt(2) = sqrt(4 / 2)
    _close(losses.variation_loss(m, m_recon, mu, tau), [1.0 + math.sqrt(12.5) + math.sqrt(2.0)])


def test_variation_loss_kl_hand_computed():
    mu, tau = tf.constant([[1.0, 0.0]]), tf.constant([[1.0, math.e]])
    # per element 1/2 (mu^2 + tau^2 - 1) - log tau: 0.5 and e^2 / 2 - 1.5, averaged
    expected = (0.5 + math.e ** 2 / 2 - 1.5) / 2
    _close(losses.variation_distribution_loss(mu, tau, distribution="kl"), [expected])


def test_variation_loss_rejects_unknown_distribution():
    with pytest.raises(ValueError, match="distribution"):
        losses.variation_distribution_loss(tf.zeros([1, 2]), tf.ones([1, 2]), distribution="l2")


# Eqs. 11-12 -----------------------------------------------------------------------------

UNIFORM, SKEWED = tf.constant([[0.0, 0.0]]), tf.constant([[0.0, LN3]])  # p = (1/2, 1/2), q = (1/4, 3/4)
P, Q = (0.5, 0.5), (0.25, 0.75)


def test_kl_divergence_two_class_and_equal_distributions():
    log_p, log_q = tf.nn.log_softmax(UNIFORM), tf.nn.log_softmax(SKEWED)
    _close(losses.kl_divergence(log_p, log_q), [_kl(P, Q)])
    _close(losses.kl_divergence(log_q, log_p), [_kl(Q, P)])
    logits = tf.random.stateless_normal([4, 7], seed=[3, 4]) * 5.0
    _close(losses.kl_divergence(tf.nn.log_softmax(logits), tf.nn.log_softmax(logits)), np.zeros(4))


def test_instance_alignment_paper_follows_eq11_argument_order():
    # KL(p(X_ir) || p(X_ir2rgb)) + KL(p(X_rgb2ir) || p(X_rgb))
    value = losses.instance_alignment_loss(ir_logits=UNIFORM, ir2rgb_logits=SKEWED,
                                           rgb_logits=UNIFORM, rgb2ir_logits=SKEWED)
    _close(value, [_kl(P, Q) + _kl(Q, P)])


def test_instance_alignment_official_is_symmetric():
    value = losses.instance_alignment_loss(UNIFORM, SKEWED, UNIFORM, SKEWED, convention="official")
    _close(value, [2 * (_kl(P, Q) + _kl(Q, P))])


def test_instance_alignment_is_zero_for_equal_predictions():
    logits = tf.random.stateless_normal([3, 5], seed=[5, 6])
    for convention in losses.ALIGNMENT_CONVENTIONS:
        _close(losses.instance_alignment_loss(logits, logits, logits, logits, convention=convention), np.zeros(3))


@pytest.mark.parametrize("convention, real_gets_gradient", [("paper", True), ("official", False)])
def test_instance_alignment_gradient_routing(convention, real_gets_gradient):
    ir, rgb = tf.constant([[0.3, -0.2, 1.0]]), tf.constant([[1.0, 0.5, -1.0]])
    ir2rgb, rgb2ir = tf.constant([[2.0, 0.0, 0.0]]), tf.constant([[0.0, 0.0, 2.0]])
    with tf.GradientTape() as tape:
        tape.watch([ir, ir2rgb, rgb, rgb2ir])
        value = losses.instance_alignment_loss(ir, ir2rgb, rgb, rgb2ir, convention=convention)
    g_ir, g_ir2rgb, g_rgb, g_rgb2ir = tape.gradient(value, [ir, ir2rgb, rgb, rgb2ir])
    assert np.abs(g_ir2rgb.numpy()).sum() > 0 and np.abs(g_rgb2ir.numpy()).sum() > 0
    if real_gets_gradient:
        assert np.abs(g_ir.numpy()).sum() > 0 and np.abs(g_rgb.numpy()).sum() > 0
    else:
        assert g_ir is None and g_rgb is None


def test_local_alignment_averages_regions():
    logits = [tf.random.stateless_normal([2, 4], seed=[7, i]) for i in range(8)]
    region_1, region_2 = logits[:4], logits[4:]
    per_region = [losses.instance_alignment_loss(*region) for region in (region_1, region_2)]
    lists = [[a, b] for a, b in zip(region_1, region_2)]  # ir, ir2rgb, rgb, rgb2ir lists of 2 regions
    _close(losses.local_alignment_loss(*lists), (per_region[0] + per_region[1]) / 2)
    with pytest.raises(ValueError, match="regions"):
        losses.local_alignment_loss(lists[0], lists[1], lists[2], lists[3][:1])


def test_unpaired_local_alignment_hand_computed():
    """Table 3 index 8: Eq. 12 with X_ir2rgb -> X_rgb and X_rgb2ir -> X_ir (the same person)."""
    # Region 1: p(ir) = (1/2, 1/2), p(rgb) = (1/4, 3/4); region 2: both (1/2, 1/2).
    ir, rgb = [UNIFORM, UNIFORM], [SKEWED, UNIFORM]
    # paper: Eq. 12's two terms both become KL(p_ir || p_rgb); region 2 adds 0; mean over 2 regions.
    _close(losses.unpaired_local_alignment_loss(ir, rgb), [2 * _kl(P, Q) / 2])
    # official: symmetric KL with each side in turn as the stopped target.
    _close(losses.unpaired_local_alignment_loss(ir, rgb, convention="official"), [2 * (_kl(P, Q) + _kl(Q, P)) / 2])
    with tf.GradientTape() as tape:
        tape.watch([ir[0], rgb[0]])
        value = losses.unpaired_local_alignment_loss(ir[:1], rgb[:1])
    g_ir, g_rgb = tape.gradient(value, [ir[0], rgb[0]])
    # d/dz KL(p || softmax(z)) = softmax(z) - p: 2 x ((1/4, 3/4) - (1/2, 1/2)) for the RGB logits.
    _close(g_rgb, [[-0.5, 0.5]])
    assert np.abs(g_ir.numpy()).sum() > 0


# Table 3 index 7: the modality GAN on set-level features ---------------------------------

def test_modality_discriminator_loss_hand_computed():
    rgb, ir = tf.constant([1.0, 0.0, 3.0]), tf.constant([0.0, -1.0])
    # RGB: (D - 1)^2 = 0, 1, 4; IR: D^2 = 0, 1
    _close(losses.lsgan_modality_discriminator_loss(rgb, ir), [0.0, 1.0, 4.0, 0.0, 1.0])
    # A perfect discriminator (RGB 1, IR 0) is at its zero optimum.
    _close(losses.lsgan_modality_discriminator_loss(tf.ones([2]), tf.zeros([3])), np.zeros(5))


def test_modality_losses_at_the_indistinguishable_equilibrium():
    """Equal RGB and IR feature distributions: the optimal LSGAN discriminator scores 1/2
    everywhere; there the discriminator loss is 1/4 per example and minimal over constant
    scores, and the encoder's confusion loss is 0 with a zero gradient."""
    half = tf.fill([4], 0.5)
    _close(losses.lsgan_modality_discriminator_loss(half, half), np.full(8, 0.25))
    constants = np.linspace(0.0, 1.0, 101)
    # mean over a balanced batch of (c - 1)^2 and c^2 is smallest at c = 1/2
    means = [float(tf.reduce_mean(losses.lsgan_modality_discriminator_loss(tf.fill([4], c), tf.fill([4], c))))
             for c in constants]
    assert constants[int(np.argmin(means))] == pytest.approx(0.5)
    with tf.GradientTape() as tape:
        tape.watch(half)
        value = losses.lsgan_modality_confusion_loss(half)
    _close(value, np.zeros(4))
    _close(tape.gradient(value, half), np.zeros(4))
    _close(losses.lsgan_modality_confusion_loss(tf.constant([1.0, 0.0, 2.5])), [0.25, 0.25, 4.0])


# Eq. 13 ---------------------------------------------------------------------------------

def test_cross_entropy_without_smoothing_matches_keras():
    logits = tf.random.stateless_normal([5, 6], seed=[8, 9]) * 3.0
    labels = tf.constant([0, 5, 2, 2, 1])
    expected = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    _close(losses.label_smoothed_cross_entropy(labels, logits, epsilon=0.0), expected, atol=1e-5)


def test_label_smoothed_cross_entropy_hand_computed():
    # p = (1/4, 1/4, 1/2); label 2, epsilon 0.3 -> q = (0.1, 0.1, 0.8)
    # -(0.1 log 1/4 + 0.1 log 1/4 + 0.8 log 1/2) = 0.4 log 2 + 0.8 log 2
    value = losses.label_smoothed_cross_entropy(tf.constant([2]), tf.constant([[0.0, 0.0, math.log(2.0)]]), 0.3)
    _close(value, [1.2 * math.log(2.0)])


def test_cross_modal_triplet_hand_computed():
    rgb, ir = tf.constant([[0.0, 0.0], [3.0, 0.0]]), tf.constant([[0.0, 2.0], [1.0, 0.0]])
    labels = tf.constant([0, 1])
    # rgb0: positive ir0 at 2, negative ir1 at 1 -> 0.3 + 2 - 1; rgb1: 2 vs sqrt(13) -> 0
    # ir0: positive rgb0 at 2, negative rgb1 at sqrt(13) -> 0; ir1: 2 vs rgb0 at 1 -> 1.3
    value = losses.cross_modal_triplet_loss(rgb, ir, labels, labels, margin=0.3)
    _close(value, [1.3, 0.0, 0.0, 1.3], atol=1e-5)


def test_triplet_takes_farthest_positive_and_closest_negative():
    anchor = tf.constant([[0.0, 0.0]])
    candidates = tf.constant([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    candidate_labels = tf.constant([0, 0, 1, 1])
    # hardest: positive at 3, negative at 2 -> 1.3 (closest positive or farthest negative give 0)
    value = losses.batch_hard_triplet_loss(anchor, tf.constant([0]), candidates, candidate_labels, margin=0.3)
    _close(value, [1.3], atol=1e-5)


def test_triplet_is_zero_when_negatives_are_beyond_margin():
    centres = tf.constant([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = tf.constant([0, 0, 1, 1, 2, 2])
    rgb = tf.gather(centres, labels) + 0.1 * tf.random.stateless_normal([6, 2], seed=[1, 1])
    ir = tf.gather(centres, labels) + 0.1 * tf.random.stateless_normal([6, 2], seed=[2, 2])
    np.testing.assert_array_equal(losses.cross_modal_triplet_loss(rgb, ir, labels, labels, margin=0.3), 0.0)
    # Same features, a margin larger than the gap: every anchor is active.
    assert np.all(losses.cross_modal_triplet_loss(rgb, ir, labels, labels, margin=20.0).numpy() > 0)


def test_triplet_gradients_finite_for_coinciding_features_and_lonely_anchors():
    rgb, ir = tf.constant([[1.0, 2.0], [5.0, 5.0], [9.0, 9.0]]), tf.constant([[1.0, 2.0], [5.0, 6.0]])
    rgb_labels, ir_labels = tf.constant([0, 1, 7]), tf.constant([0, 1])  # id 7 has no IR positive
    with tf.GradientTape() as tape:
        tape.watch([rgb, ir])
        value = losses.cross_modal_triplet_loss(rgb, ir, rgb_labels, ir_labels, margin=0.3)
    assert value.shape == (5,)
    assert float(value[2]) == 0.0  # no positive: no triplet
    for grad in tape.gradient(value, [rgb, ir]):
        assert np.all(np.isfinite(grad.numpy()))


# Eq. 15 ---------------------------------------------------------------------------------

def test_unseen_identity_loss_is_zero_for_the_endpoints():
    l1, l2 = tf.random.stateless_normal([2, 5], seed=[4, 4]), tf.random.stateless_normal([2, 5], seed=[5, 5])
    alpha = tf.constant([1.0, 0.0])
    mix = tf.stack([l1[0], l2[1]])  # alpha = 1 -> target p1; alpha = 0 -> target p2
    for direction in losses.UNSEEN_ID_DIRECTIONS:
        _close(losses.unseen_identity_loss(mix, l1, l2, alpha, direction=direction), [0.0, 0.0])


def test_unseen_identity_loss_hand_computed():
    # p_mix = p1 = (1/2, 1/2), p2 = (1/4, 3/4), alpha 1/2 -> target (3/8, 5/8)
    target = (0.375, 0.625)
    _close(losses.unseen_identity_loss(UNIFORM, UNIFORM, SKEWED, tf.constant([0.5])), [_kl(P, target)])
    _close(losses.unseen_identity_loss(UNIFORM, UNIFORM, SKEWED, tf.constant([0.5]), direction="target_first"),
           [_kl(target, P)])


def test_unseen_identity_gradients_reach_only_the_mixed_logits():
    mix, l1, l2 = (tf.random.stateless_normal([3, 4], seed=[6, i]) for i in range(3))
    alpha = tf.constant([0.2, 0.5, 0.9])
    with tf.GradientTape() as tape:
        tape.watch([mix, l1, l2, alpha])
        value = losses.unseen_identity_loss(mix, l1, l2, alpha)
    g_mix, g1, g2, g_alpha = tape.gradient(value, [mix, l1, l2, alpha])
    assert np.abs(g_mix.numpy()).sum() > 0
    assert g1 is None and g2 is None and g_alpha is None


# Eqs. 8, 16 and the global-batch mean ---------------------------------------------------

def test_weighted_sum_values_and_loud_failures():
    terms = {"recon": tf.constant(1.0), "cyc": tf.constant(0.5), "gan": tf.constant(2.0)}
    _close(losses.weighted_sum(terms, {"recon": 1.0, "cyc": 10.0, "gan": 0.25}), 6.5)
    with pytest.raises(ValueError, match=r"without a weight: \['gan'\]"):
        losses.weighted_sum(terms, {"recon": 1.0, "cyc": 10.0})
    with pytest.raises(ValueError, match=r"without a term: \['ui'\]"):
        losses.weighted_sum(terms, {"recon": 1.0, "cyc": 10.0, "gan": 1.0, "ui": 1.0})
    with pytest.raises(ValueError):
        losses.weighted_sum({}, {})


def test_mean_over_global_batch_divides_by_the_global_size():
    per_example = tf.constant([1.0, 2.0, 3.0])
    _close(losses.mean_over_global_batch(per_example, global_batch_size=6), 1.0)
    _close(losses.mean_over_global_batch(per_example), 2.0)


def test_losses_trace_with_unknown_batch_size():
    @tf.function(input_signature=[tf.TensorSpec([None, 2]), tf.TensorSpec([None, 2]), tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None, 2, 2, 1])])
    def graph_losses(rgb, ir, labels, maps):
        return (losses.cross_modal_triplet_loss(rgb, ir, labels, labels),
                losses.label_smoothed_cross_entropy(labels, rgb),
                losses.lsgan_generator_loss([maps]),
                losses.variation_distribution_loss(rgb, tf.exp(ir)))

    rgb, ir = tf.constant([[0.0, 0.0], [3.0, 0.0]]), tf.constant([[0.0, 2.0], [1.0, 0.0]])
    labels, maps = tf.constant([0, 1]), tf.reshape(tf.range(8, dtype=tf.float32), [2, 2, 2, 1])
    graph = graph_losses(rgb, ir, labels, maps)
    eager = (losses.cross_modal_triplet_loss(rgb, ir, labels, labels), losses.label_smoothed_cross_entropy(labels, rgb),
             losses.lsgan_generator_loss([maps]), losses.variation_distribution_loss(rgb, tf.exp(ir)))
    for g, e in zip(graph, eager):
        _close(g, e)


def test_triplet_mined_in_a_wider_gallery_equals_the_whole_batch_loss():
    """Replicas mine in the gathered global batch: each half of a batch, mining in the
    whole batch, gives exactly its anchors' share of the one-batch loss."""
    rng = np.random.default_rng(3)
    rgb, ir = (tf.constant(rng.normal(size=(8, 5)), tf.float32) for _ in range(2))
    labels = tf.constant([0, 0, 1, 1, 2, 2, 3, 3])
    whole = losses.cross_modal_triplet_loss(rgb, ir, labels, labels, margin=0.3).numpy()  # [16]
    for half in (slice(0, 4), slice(4, 8)):
        parts = {"rgb": rgb[half], "ir": ir[half], "labels": labels[half]}
        full = {id(parts["rgb"]): rgb, id(parts["ir"]): ir, id(parts["labels"]): labels}
        value = losses.cross_modal_triplet_loss(parts["rgb"], parts["ir"], parts["labels"], parts["labels"],
                                                margin=0.3, gallery=lambda t: full[id(t)]).numpy()  # [8]
        np.testing.assert_allclose(value[:4], whole[:8][half], rtol=1e-6)
        np.testing.assert_allclose(value[4:], whole[8:][half], rtol=1e-6)
        # mining in the half alone misses the other half's negatives
        alone = losses.cross_modal_triplet_loss(parts["rgb"], parts["ir"], parts["labels"], parts["labels"], 0.3)
        assert not np.allclose(alone.numpy(), value)
