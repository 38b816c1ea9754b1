"""Pictures of module G: the paired images of Fig. 6 and the mixing strips of Fig. 7.

One drawing for the TensorBoard summaries of training (:func:`training_images`)
and for ``python -m jsia_tf.analyze``, so that both show the same thing. Every picture
is a grid of framed cells (:func:`tile`), uint8 RGB.
"""

import numpy as np
import tensorflow as tf

from jsia_tf.config import MODALITIES
from jsia_tf.data import pipeline
from jsia_tf.models.generation import from_unit_range

# Pixels around each cell of a grid; their colour tells the role of the image.
BORDER = 3
WHITE, BLUE, GREEN, RED = (255, 255, 255), (40, 90, 220), (0, 170, 0), (220, 0, 0)
# Fig. 7: the weights of x_1 in the mixtures between x_1 and x_2.
ALPHAS = (1.0, 0.75, 0.5, 0.25, 0.0)
# Fig. 6 columns as (kind, modality) of JSIA.generate's output: real RGB | X_rgb2ir |
# real IR | X_ir2rgb ("cross"[m] is the generated image OF modality m).
PAIRED = (("real", "rgb"), ("cross", "ir"), ("real", "ir"), ("cross", "rgb"))
# The training summaries add each modality's reconstruction (Eq. 4) and cycle (Eq. 6).
PAIRED_TRAINING = (("real", "rgb"), ("cross", "ir"), ("recon", "rgb"), ("cycle", "rgb"),
                   ("real", "ir"), ("cross", "rgb"), ("recon", "ir"), ("cycle", "ir"))


def tile(cells, colors=WHITE, border=BORDER):
    """One image of a grid of images, each framed in its colour.

    Args:
      cells: uint8 [R, C, H, W, 3]; colors: [R, C, 3] (or broadcastable) frame colours.
    Returns:
      uint8 [R (H + 2 border), C (W + 2 border), 3].
    """
    rows, cols, height, width, _ = cells.shape
    framed = np.empty((rows, cols, height + 2 * border, width + 2 * border, 3), np.uint8)
    framed[:] = np.broadcast_to(np.asarray(colors, np.uint8), (rows, cols, 3))[:, :, None, None, :]
    framed[:, :, border:border + height, border:border + width] = cells
    return framed.transpose(0, 2, 1, 3, 4).reshape(rows * framed.shape[2], cols * framed.shape[3], 3)


def ranked_grid(cells, correct):
    """A ranked view: each row a query (blue frame) and its matches, best first, framed green
    for the right person, red for another, white where the person is not known.

    Drawn alike by ``python -m jsia_tf.analyze`` (``ranked``) and ``python -m jsia_tf.search``.

    Args:
      cells: uint8 [Q, 1 + K, H, W, 3], the query then its K matches.
      correct: [Q, K], 1 right person, 0 another, -1 not known (and booleans).
    Returns:
      uint8 [Q (H + 2b), (1 + K)(W + 2b), 3].
    """
    correct = np.asarray(correct, np.int64)
    colors = np.where((correct == 1)[..., None], GREEN, np.where((correct == 0)[..., None], RED, WHITE))
    query = np.broadcast_to(BLUE, (len(cells), 1, 3))
    return tile(cells, np.concatenate([query, colors], axis=1))  # colors: [Q, 1 + K, 3]


def to_pixels(images, unit_range=True):
    """uint8 RGB numpy [..., 3] of unit-range (module G) or caffe-normalised images."""
    images = tf.cast(images, tf.float32)
    return pipeline.denormalize(from_unit_range(images) if unit_range else images).numpy()


def latent_codes(model, gen, modality):
    """(z = u [B, h', w', Z], style [B, style_dim]) of ``gen``'s real images of ``modality``:
    module V in inference mode gives its mean, so a picture does not depend on a draw."""
    z, _, _ = model.variation(gen["content"][modality], training=False)
    return z, gen["style"][modality]


def paired_grid(gen, columns=PAIRED, count=None):
    """Fig. 6: a row per person of the images ``columns`` names, from :meth:`JSIA.generate`'s
    output ``gen`` (its first ``count`` persons). uint8 [n (H + 2b), len(columns)(W + 2b), 3]."""
    cells = np.stack([to_pixels(gen[kind][m][:count]) for kind, m in columns], axis=1)  # [n, C, H, W, 3]
    return tile(cells)


def mixing_grid(model, gen, first, second, alphas=ALPHAS):
    """Fig. 7: for each pair (``first[i]``, ``second[i]``) of rows of ``gen`` and each
    modality, the strip x_1 | the Eq. 14 mixtures at ``alphas`` (weights of x_1) | x_2.

    Returns uint8 [2 n (H + 2b), (2 + len(alphas))(W + 2b), 3]: pair 0's RGB row, its IR
    row, pair 1's RGB row, ...
    """
    n, steps = len(first), len(alphas)
    pick_1, pick_2 = np.repeat(first, steps), np.repeat(second, steps)  # [n * steps]
    alpha = tf.constant(np.tile(alphas, n), tf.float32)
    rows = []
    for m in MODALITIES:
        z, style = latent_codes(model, gen, m)
        mixed = model.decode_mixture(m, (tf.gather(z, pick_1), tf.gather(style, pick_1)),
                                     (tf.gather(z, pick_2), tf.gather(style, pick_2)), alpha)
        real = to_pixels(gen["real"][m])  # [B, H, W, 3]
        mixed = to_pixels(mixed).reshape(n, steps, *real.shape[1:])  # [n, steps, H, W, 3]
        rows.append(np.concatenate([real[first][:, None], mixed, real[second][:, None]], axis=1))
    cells = np.stack(rows, axis=1)  # [n, 2, 2 + steps, H, W, 3]
    return tile(cells.reshape(2 * n, *cells.shape[2:]))


def training_images(model, gan_batch, num_instances, max_images=4):
    """TensorBoard pictures of module G on a generation batch, networks in inference mode.

    ``num_instances``: images per identity and modality of the batch
    (``DataConfig.gan_num_instances``). Returns uint8 RGB [1, height, width, 3] images:
      "paired": Fig. 6, a row per image of the first ``max_images``: real RGB |
        X_rgb2ir | reconstruction | cycle | real IR | X_ir2rgb | reconstruction | cycle;
      "mixing": Fig. 7, the RGB and the IR strip x_1 | Eq. 14 mixtures | x_2 between
        the batch's first image and the first image of the next identity.
    """
    gen = model.generate(gan_batch["rgb"], gan_batch["ir"], training=False)
    second = num_instances % int(gan_batch["rgb"].shape[0])
    return {"paired": paired_grid(gen, PAIRED_TRAINING, max_images)[None],
            "mixing": mixing_grid(model, gen, [0], [second])[None]}
