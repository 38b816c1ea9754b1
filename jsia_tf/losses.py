"""The JSIA-ReID losses (paper Sec. 3, Eqs. 4-16; Table 3 ablations), as pure functions of tensors.

Conventions shared by every function:
- Inputs may be bfloat16/float16 (mixed precision); they are cast to float32 first
  and every loss is computed and returned in float32.
- Each loss returns PER-EXAMPLE values, shape [N] with N named in its docstring, and
  never averages over the batch: the trainer averages with
  :func:`mean_over_global_batch`, which divides by the GLOBAL batch size, as Keras 3
  optimizers sum gradients over replicas under ``tf.distribute``. Maps (images,
  discriminator outputs, feature maps) are reduced to one value per example by the
  mean over their non-batch axes, so the batch mean equals the official code's mean.
- Batch-hard triplet mining searches the candidates it is given: the trainer passes
  the all-gathered features of every replica, so replicas mine in the global batch.
- Classifier outputs are LOGITS; probabilities are handled as log-softmax.
"""

import tensorflow as tf

from jsia_tf.config import ALIGNMENT_CONVENTIONS, UNSEEN_ID_DIRECTIONS, VARIATION_DISTRIBUTIONS, check_choice

# Squared distances at or below this are treated as 0 by `_safe_sqrt`: d(sqrt x)/dx
# = 1 / (2 sqrt(x)) would be infinite at 0 (coinciding features); the floor bounds it
# by 5e5 and changes a distance by at most 1e-6.
_SQRT_FLOOR = 1e-12

def _f32(x):
    return tf.cast(x, tf.float32)



def _log_softmax(logits):
    """Log-probabilities [B, C] of logits [B, C], computed stably in float32."""
    return tf.nn.log_softmax(_f32(logits))


def _mean_per_example(x):
    """Mean of ``x`` [B, ...] over every non-batch axis -> [B]."""
    return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def _safe_sqrt(x):
    """sqrt(x) where x > _SQRT_FLOOR, else 0 with a zero gradient."""
    above = x > _SQRT_FLOOR
    return tf.where(above, tf.sqrt(tf.where(above, x, 1.0)), 0.0)


def mean_over_global_batch(per_example, global_batch_size=None):
    """sum(per_example) / global_batch_size, a float32 scalar (tf.nn.compute_average_loss).

    Under ``tf.distribute`` each replica passes its local per-example values and the
    size of the batch summed over all replicas; the replicas' results add up to the
    mean over the global batch. Without ``global_batch_size``, the local batch size
    times the number of replicas is used (correct when all replicas hold equal batches).
    """
    return tf.nn.compute_average_loss(_f32(per_example), global_batch_size=global_batch_size)


def weighted_sum(terms, weights):
    """sum_k weights[k] * terms[k]: the totals of Eq. 8 and Eq. 16.

    Eq. 8:  L^G = L_recon + lambda_cyc L_cyc + lambda_gan L_gan. The paper writes
            lambda_cyc twice (a typo); the GAN weight is a separate lambda_gan here.
    Eq. 16: L = L^G + L^v + L^id + lambda_il L^il + lambda_lr L^lr + lambda_ui L^ui.

    Args:
      terms: name -> loss; all the same shape: scalars (already averaged with
        `mean_over_global_batch`; needed when terms come from batches of different
        sizes, like the generation and re-ID batches) or per-example [N].
      weights: name -> float weight, exactly the names of ``terms``.
    Raises:
      ValueError: a term without a weight, a weight without a term, or no terms.
    """
    unweighted = sorted(set(terms) - set(weights))
    unused = sorted(set(weights) - set(terms))
    if unweighted or unused or not terms:
        raise ValueError(f"terms without a weight: {unweighted}; weights without a term: {unused}; "
                         f"terms given: {sorted(terms)}")
    return tf.add_n([tf.cast(weights[name], tf.float32) * _f32(terms[name]) for name in sorted(terms)])


def l1_per_example(x, y):
    """Mean absolute error per example: the ||. ||_1 of Eqs. 4, 5 and 10.

    Eq. 4 (L_recon) is ||X - D(E^i(X), E^s(X))||_1 and Eq. 5 (L_cyc) is
    ||X - X_cyc||_1 (X_cyc from Eq. 6), each summed over the RGB and IR modalities:
    call this once per modality and add the [B] results. The L1 distance is the mean
    over elements (like the official nn.L1Loss), so its scale does not depend on the
    image size.

    Args:
      x, y: [B, ...] (images [B, H, W, C], feature maps [B, h, w, c]).
    Returns:
      [B]: mean |x - y| over every non-batch axis.
    """
    return _mean_per_example(tf.abs(_f32(x) - _f32(y)))


def lsgan_generator_loss(fake_outputs):
    """Generator side of Eq. 7 in the LSGAN form (Mao et al. 2017; paper Sec. 4.2).

    Eq. 7 is written as the log-likelihood GAN loss; Sec. 4.2 trains it as an LSGAN:
    sum over discriminator scales s of mean((Dis_s(X_fake) - 1)^2). Call once per
    modality (Dis_rgb on X_ir2rgb, Dis_ir on X_rgb2ir) and add.

    Args:
      fake_outputs: list over scales of discriminator maps [B, h_s, w_s, 1] on
        generated images.
    Returns:
      [B]: sum over scales of the per-example mean of (D - 1)^2.
    """
    return tf.add_n([_mean_per_example(tf.square(_f32(d) - 1.0)) for d in fake_outputs])


def lsgan_discriminator_loss(real_outputs, fake_outputs):
    """Discriminator side of Eq. 7 (LSGAN): sum_s mean(D_s(fake)^2) + mean((D_s(real) - 1)^2).

    The generated images must enter the discriminator already stopped
    (tf.stop_gradient on the images, not on these maps), as in the official code.

    Args:
      real_outputs, fake_outputs: lists over scales of maps [B, h_s, w_s, 1] on real
        and generated images; equal batch sizes (each fake is paired with a real).
    Returns:
      [B]: per example, sum over scales of the mean of D(fake)^2 + (D(real) - 1)^2.
    """
    if len(real_outputs) != len(fake_outputs):
        raise ValueError(f"{len(real_outputs)} real vs {len(fake_outputs)} fake discriminator scales")
    return tf.add_n([_mean_per_example(tf.square(_f32(fake))) + _mean_per_example(tf.square(_f32(real) - 1.0))
                     for real, fake in zip(real_outputs, fake_outputs)])


def variation_distribution_loss(mu, tau, distribution="paper"):
    """L^v_distri of Eq. 10: pulls the VAE posterior N(mu, tau^2) to N(0, 1).

    distribution="paper": ||mu||_2 + ||tau - 1||_2 as written. Each 2-norm is
      normalised by the element count n like the L1 term: ||v||_2 / sqrt(n) =
      sqrt(mean(v^2)), the root mean square, so the three terms of Eq. 10 keep the
      same scale whatever the latent size. Not squared (the paper's norm); its
      gradient at exactly 0 is taken as 0.
    distribution="kl": the standard VAE term KL(N(mu, tau^2) || N(0, 1)) =
      1/2 (mu^2 + tau^2 - 1 - 2 log tau), averaged over elements (times n gives the
      textbook sum).

    Args:
      mu, tau: [B, ...] mean and standard deviation (tau > 0) of the posterior.
    Returns:
      [B], zero exactly when mu = 0 and tau = 1.
    """
    check_choice("distribution", distribution, VARIATION_DISTRIBUTIONS)
    mu, tau = _f32(mu), _f32(tau)
    if distribution == "paper":
        return (_safe_sqrt(_mean_per_example(tf.square(mu)))
                + _safe_sqrt(_mean_per_example(tf.square(tau - 1.0))))
    return _mean_per_example(0.5 * (tf.square(mu) + tf.square(tau) - 1.0) - tf.math.log(tau))


def variation_loss(m, m_recon, mu, tau, distribution="paper"):
    """Eq. 10: L^v = ||M - M^recon||_1 + L^v_distri (see `variation_distribution_loss`).

    Args:
      m, m_recon: [B, h, w, c] modality-invariant feature map and its VAE reconstruction.
      mu, tau: [B, ...] posterior mean and standard deviation.
    Returns:
      [B]: mean |M - M^recon| + the distribution term.
    """
    return l1_per_example(m, m_recon) + variation_distribution_loss(mu, tau, distribution)


def kl_divergence(log_p, log_q):
    """KL(p || q) = sum_c p_c (log p_c - log q_c) of log-probabilities [B, C] -> [B]."""
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def _official_symmetric_kl(real_logits, generated_logits):
    # Official code: the real image's prediction is a fixed target, both directions.
    log_real = tf.stop_gradient(_log_softmax(real_logits))
    log_generated = _log_softmax(generated_logits)
    return kl_divergence(log_real, log_generated) + kl_divergence(log_generated, log_real)


def instance_alignment_loss(ir_logits, ir2rgb_logits, rgb_logits, rgb2ir_logits, convention="paper"):
    """Eq. 11, L^il: KL between the identity predictions of cross-modality pairs.

    convention="paper": exactly Eq. 11,
      KL(p(X_ir) || p(X_ir2rgb)) + KL(p(X_rgb2ir) || p(X_rgb)), gradients into both sides.
    convention="official": per pair, KL(p_real || p_gen) + KL(p_gen || p_real) with
      p_real stopped, the official code's symmetric KL (computed exactly here; the
      official code adds 1e-8 inside its logarithms).
    Generated images should be stopped by the caller when, as in the official code,
    the alignment must train only the re-ID encoders.

    Args:
      ir_logits, ir2rgb_logits: [B, C] logits of real IR images and of their
        generated RGB pairs; rgb_logits, rgb2ir_logits: the same for RGB, same B.
    Returns:
      [B]: the IR pair's divergence + the RGB pair's.
    """
    check_choice("convention", convention, ALIGNMENT_CONVENTIONS)
    if convention == "official":
        return (_official_symmetric_kl(ir_logits, ir2rgb_logits)
                + _official_symmetric_kl(rgb_logits, rgb2ir_logits))
    return (kl_divergence(_log_softmax(ir_logits), _log_softmax(ir2rgb_logits))
            + kl_divergence(_log_softmax(rgb2ir_logits), _log_softmax(rgb_logits)))


def local_alignment_loss(ir_logits, ir2rgb_logits, rgb_logits, rgb2ir_logits, convention="paper"):
    """Eq. 12, L^il+lr: Eq. 11 on each of n horizontal regions, averaged (1/n sum_i).

    Args:
      ir_logits, ir2rgb_logits, rgb_logits, rgb2ir_logits: lists of n [B, C] logits,
        element i from the i-th region's classifier C^i.
      convention: as in `instance_alignment_loss`.
    Returns:
      [B]: the mean over regions of the per-region Eq. 11 value.
    """
    counts = {len(ir_logits), len(ir2rgb_logits), len(rgb_logits), len(rgb2ir_logits)}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"local_alignment_loss needs the same number (>= 1) of regions in every list, got "
                         f"{[len(ir_logits), len(ir2rgb_logits), len(rgb_logits), len(rgb2ir_logits)]}")
    parts = zip(ir_logits, ir2rgb_logits, rgb_logits, rgb2ir_logits)
    return tf.add_n([instance_alignment_loss(*part, convention=convention) for part in parts]) / len(ir_logits)


def unpaired_local_alignment_loss(ir_logits, rgb_logits, convention="paper"):
    """Eq. 12 on real unpaired images: the degraded LR of Table 3 (index 8).

    Sec. 4.4 replaces the generated paired-images of Eq. 12 by "original
    unpaired-images". In each of Eq. 12's pairs the generated image is replaced by the
    REAL image of the other modality showing the same person (a different image,
    another pose and view): X_ir2rgb -> X_rgb and X_rgb2ir -> X_ir, i.e.
    ``local_alignment_loss(ir, rgb, rgb, ir)``. Per region k:

      convention="paper": KL(p^k(X_ir) || p^k(X_rgb)) + KL(p^k(X_ir) || p^k(X_rgb)), Eq. 12's
        two terms, which now coincide: 2 KL(p^k_ir || p^k_rgb), gradients into both sides;
      convention="official": the symmetric KL with the IR prediction as the stopped
        target, plus the symmetric KL with the RGB prediction as the stopped target.

    The value keeps Eq. 12's scale (two divergences per region, averaged over regions),
    so ``lambda_local`` (the paper's lambda_lr) means the same with paired and unpaired images.

    Args:
      ir_logits, rgb_logits: lists of n [B, C] logits of the k-th region's classifier
        C^k; ir[i] and rgb[i] show the same person.
      convention: as in `instance_alignment_loss`.
    Returns:
      [B]: the mean over regions of the two divergences of each id-aligned pair.
    """
    return local_alignment_loss(ir_logits, rgb_logits, rgb_logits, ir_logits, convention)


def lsgan_modality_discriminator_loss(rgb_scores, ir_scores):
    """The modality discriminator's side of the degraded set-level alignment (Table 3, index 7).

    Least squares (Mao et al. 2017), like Eq. 7's discriminators: RGB features are
    labelled 1, IR features 0 (Dai et al. 2018's modality discriminator):
    (D(M_rgb) - 1)^2 per RGB example, D(M_ir)^2 per IR example. The features must
    enter D already stopped, so that this trains D only. Minimised by the LSGAN
    optimum D*(M) = p_rgb(M) / (p_rgb(M) + p_ir(M)), which is 1/2 everywhere once the
    two feature distributions coincide (the loss is then 1/4 per example).

    Args:
      rgb_scores: [B_rgb] scores of RGB images' set-level features; ir_scores: [B_ir].
    Returns:
      [B_rgb + B_ir]: RGB examples first.
    """
    return tf.concat([tf.square(_f32(rgb_scores) - 1.0), tf.square(_f32(ir_scores))], axis=0)


def lsgan_modality_confusion_loss(scores):
    """The set-level encoder's adversarial side of Table 3's index 7: (D(M) - 1/2)^2.

    Dai et al. 2018 (cmGAN) train the feature extractor to fool a modality
    discriminator. In least-squares form the target is 1/2 for BOTH modalities, the
    value of the optimal discriminator (`lsgan_modality_discriminator_loss`) when RGB
    and IR features are indistinguishable: the term is 0 exactly at that
    equilibrium, and it treats the modalities symmetrically (flipped labels would
    reward RGB features that look like IR ones rather than features of neither
    modality). Gradients reach the features (E^sl) and D's weights; only E^sl is
    stepped with it.

    Args:
      scores: [N] scores of set-level features of both modalities.
    Returns:
      [N] squared distance of each score from 1/2.
    """
    return tf.square(_f32(scores) - 0.5)


def label_smoothed_cross_entropy(labels, logits, epsilon=0.1):
    """L_cls of Eq. 13: cross-entropy with label smoothing (Szegedy et al. 2016).

    -sum_c q_c log p_c with q = (1 - epsilon) onehot(label) + epsilon / C. The paper
    writes plain CE (-log p(v)), which is epsilon=0; the official code uses 0.1.

    Args:
      labels: [B] int identity labels; logits: [B, C].
    Returns:
      [B] cross-entropy per example.
    """
    log_p = _log_softmax(logits)  # [B, C]
    num_classes = tf.shape(log_p)[-1]
    targets = (1.0 - epsilon) * tf.one_hot(labels, num_classes) + epsilon / tf.cast(num_classes, tf.float32)
    return -tf.reduce_sum(targets * log_p, axis=-1)


def _pairwise_distances(a, b):
    """Euclidean distances [A, N] between the rows of a [A, D] and b [N, D]."""
    squared = (tf.reduce_sum(tf.square(a), 1)[:, None] + tf.reduce_sum(tf.square(b), 1)[None, :]
               - 2.0 * tf.matmul(a, b, transpose_b=True))  # [A, N]
    return _safe_sqrt(squared)


def batch_hard_triplet_loss(anchor_features, anchor_labels, candidate_features, candidate_labels, margin=0.3):
    """Batch-hard triplet loss (Hermans et al. 2017), the L_triplet of Eq. 13.

    Per anchor a: [margin + max_{p: same id} D(a, p) - min_{n: other id} D(a, n)]_+,
    D the Euclidean distance, positives and negatives taken among the candidates:
    the hardest positive is the FARTHEST same-id candidate, the hardest negative the
    CLOSEST other-id one. An anchor with no positive or no negative candidate gives 0.
    Passing the same set as anchors and candidates gives the plain single-set loss.

    Args:
      anchor_features: [A, D]; anchor_labels: [A] int.
      candidate_features: [N, D]; candidate_labels: [N] int.
    Returns:
      [A] hinge value per anchor.
    """
    dist = _pairwise_distances(_f32(anchor_features), _f32(candidate_features))  # [A, N]
    same = tf.equal(anchor_labels[:, None], candidate_labels[None, :])  # [A, N]
    hardest_positive = tf.reduce_max(tf.where(same, dist, 0.0), axis=1)  # [A]; distances are >= 0
    hardest_negative = tf.reduce_min(tf.where(same, float("inf"), dist), axis=1)  # [A]
    has_both = tf.reduce_any(same, axis=1) & tf.reduce_any(~same, axis=1)
    hinge = tf.nn.relu(margin + hardest_positive - tf.where(has_both, hardest_negative, 0.0))
    return tf.where(has_both, hinge, 0.0)


def cross_modal_triplet_loss(rgb_features, ir_features, rgb_labels, ir_labels, margin=0.3, gallery=None):
    """Cross-modal batch-hard triplet of Eq. 13 (official code's mining).

    RGB anchors mine their hardest positive and negative among the IR features, IR
    anchors among the RGB features. The paper's Eq. 13 does not say where triplets
    are mined; the plain variant is `batch_hard_triplet_loss` on the joint set.

    Args:
      rgb_features: [B_rgb, D], ir_features: [B_ir, D] (official: pre-BN pooled
        features); rgb_labels: [B_rgb], ir_labels: [B_ir] int.
      gallery: maps each of these tensors to the set triplets are mined in (e.g. the
        tensor of every replica, so that replicas mine in the global batch as one
        device does); default: the batch itself.
    Returns:
      [B_rgb + B_ir]: RGB anchors first, then IR anchors. Its mean equals the official
      average of the two directions when B_rgb == B_ir.
    """
    gallery = gallery or (lambda value: value)
    return tf.concat([
        batch_hard_triplet_loss(rgb_features, rgb_labels, gallery(ir_features), gallery(ir_labels), margin),
        batch_hard_triplet_loss(ir_features, ir_labels, gallery(rgb_features), gallery(rgb_labels), margin)], axis=0)


def unseen_identity_loss(mix_logits, logits_1, logits_2, alpha, direction="paper"):
    """Eq. 15, L^ui: the mixed image's prediction against alpha p1 + (1 - alpha) p2.

    p1, p2 (predictions for x_1, x_2) and alpha are stopped: the mixture is a target.
    direction="paper": KL(p_mix || alpha p1 + (1 - alpha) p2), as Eq. 15 is written.
    direction="target_first": KL(target || p_mix), i.e. soft-target cross-entropy
      minus the (constant) target entropy, the usual mixup form.

    Args:
      mix_logits, logits_1, logits_2: [B, C]; alpha: [B] (or a scalar) in [0, 1],
        the Eq. 14 mixing ratio.
    Returns:
      [B] divergence per mixed example.
    """
    check_choice("direction", direction, UNSEEN_ID_DIRECTIONS)
    log_p_mix = _log_softmax(mix_logits)  # [B, C]
    log_p1 = tf.stop_gradient(_log_softmax(logits_1))
    log_p2 = tf.stop_gradient(_log_softmax(logits_2))
    alpha = tf.stop_gradient(tf.reshape(_f32(alpha), [-1, 1]))  # [B, 1]
    # log(alpha p1 + (1 - alpha) p2) in log space: finite for alpha in {0, 1} and tiny p.
    log_target = tf.reduce_logsumexp(
        tf.stack([tf.math.log(alpha) + log_p1, tf.math.log(1.0 - alpha) + log_p2]), axis=0)  # [B, C]
    if direction == "paper":
        return kl_divergence(log_p_mix, log_target)
    return kl_divergence(log_target, log_p_mix)
