"""Module G against ground truth: true RGB-IR pairs of synthetic test persons.

Real datasets have no pairs, so what module G's translations (Eq. 3) should look like
is unknown there; the synthetic renderer draws one person in one frame (pose, view,
placement, scene) in both modalities (``jsia_tf.data.synthetic.PAIRED_FILE``, test
persons only, never read by training). On those pairs, in each direction
(``rgb2ir``: X_rgb2ir = D_ir(E^i(X_rgb), E^s_ir(X_ir)), the source's content decoded
with the style of the TRUE pair; ``ir2rgb`` likewise):

1. fidelity to the true pair: SSIM (headline) and L1 of the generated and the true
   image, both in gray: IR -> RGB cannot recover colour (the one-to-many mapping), so
   colour is not asked for. Both are averaged over the person's pixels (the pair's
   ``person`` mask): the two cameras of a pair see their own scenes behind the person,
   which no translator can know, and which dominate a whole-frame score (the
   frame's, ``ssim_frame``, is reported beside it). Floors: a trivial translator (the
   source image's own gray version) and the mean image of the target modality;
   ``ssim_floor`` is the better of the two. A G that translates beats both.
2. identity kept: each generated image queries the real test images of its target
   modality (rank-1 by cosine similarity of the judge's Eq. 17 features), beside the
   untranslated source image's cross-modality rank-1 against the same gallery and
   chance (1 / gallery persons). The judge is an embedder passed in; the report says
   which.
3. self-reconstruction (Eq. 4) of the real pair images: SSIM and L1 per modality, which
   tells an autoencoder that works from one that does not.

Every image is compared at module G's size (``JSIA.generation_size``), in [0, 1] gray
(``LUMA_RGB``); the judge reads module F's view (``JSIA.to_alignment``).
"""

import numpy as np
from scipy import ndimage
import tensorflow as tf

from jsia_tf.config import MODALITIES
from jsia_tf.data import pipeline
from jsia_tf.eval import metrics, protocols
from jsia_tf.eval.quality import LUMA_RGB
from jsia_tf.models.generation import from_unit_range

# Direction -> (source modality, target modality).
DIRECTIONS = {"rgb2ir": ("rgb", "ir"), "ir2rgb": ("ir", "rgb")}
# SSIM (Wang et al. 2004): Gaussian window of std 1.5 (cut at 11 x 11), constants for
# values in [0, 1].
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2


def gray(pixels):
    """uint8 RGB [N, H, W, 3] -> float32 gray [N, H, W, 1] in [0, 1]."""
    return (np.asarray(pixels, np.float32) / 255.0 @ np.asarray(LUMA_RGB, np.float32))[..., None]


def ssim_map(a, b):
    """Per-pixel SSIM [N, H, W] of the gray versions of uint8 RGB ``a``, ``b`` [N, H, W, 3].

    Local means, variances and covariance under the Gaussian window, borders reflected
    so that every pixel has a value (a person reaches the image edges at small sizes).
    """
    x, y = gray(a)[..., 0].astype(np.float64), gray(b)[..., 0].astype(np.float64)

    def local(z):
        return ndimage.gaussian_filter(z, (0, SSIM_SIGMA, SSIM_SIGMA), mode="reflect",
                                       truncate=SSIM_RADIUS / SSIM_SIGMA)

    mean_x, mean_y = local(x), local(y)
    var_x, var_y = local(x * x) - mean_x ** 2, local(y * y) - mean_y ** 2
    covariance = local(x * y) - mean_x * mean_y
    return ((2 * mean_x * mean_y + SSIM_C1) * (2 * covariance + SSIM_C2)
            / ((mean_x ** 2 + mean_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2)))


def _masked_mean(values, mask):
    """Per-image mean [N] of ``values`` [N, H, W] over ``mask`` [N, H, W] (None: every pixel)."""
    if mask is None:
        return values.mean(axis=(1, 2))
    return (values * mask).sum(axis=(1, 2)) / np.maximum(mask.sum(axis=(1, 2)), 1)


def ssim(a, b, mask=None):
    """Per-pair SSIM [N] of uint8 RGB ``a``, ``b`` [N, H, W, 3], over ``mask`` [N, H, W]."""
    return _masked_mean(ssim_map(a, b), mask)


def l1(a, b, mask=None):
    """Per-pair mean absolute gray difference [N] of uint8 RGB ``a``, ``b`` [N, H, W, 3], over ``mask``."""
    return _masked_mean(np.abs(gray(a) - gray(b))[..., 0], mask)


def mean_image(images):
    """The mean of uint8 ``images`` [N, H, W, 3], rounded, repeated N times (a floor)."""
    return np.broadcast_to(np.round(np.mean(images, axis=0)).astype(np.uint8), np.shape(images))


def fidelity(generated, target, source, person=None):
    """Fidelity of ``generated`` to its true pair ``target``, with the two floors.

    Args:
      generated, target, source: uint8 RGB [N, H, W, 3]; row i of each is one pair.
      person: bool [N, H, W], the pixels scored (None: every pixel).
    Returns:
      {"ssim", "l1"}: the generated images'; {"ssim_floor_source", "l1_floor_source"}: the
      source images' own (the trivial translator); {"ssim_floor_mean", "l1_floor_mean"}:
      the target modality's mean image's; "ssim_floor" (the higher SSIM floor) and
      "l1_floor" (the lower L1 floor); "ssim_frame", "ssim_frame_floor": SSIM and its
      floor over every pixel. Means over the pairs.
    """
    out = {}
    for name, images in (("", generated), ("_floor_source", source), ("_floor_mean", mean_image(target))):
        out[f"ssim{name}"] = float(np.mean(ssim(images, target, person)))
        out[f"l1{name}"] = float(np.mean(l1(images, target, person)))
        out[f"ssim_frame{name}"] = float(np.mean(ssim(images, target)))
    out["ssim_floor"] = max(out["ssim_floor_source"], out["ssim_floor_mean"])
    out["l1_floor"] = min(out["l1_floor_source"], out["l1_floor_mean"])
    out["ssim_frame_floor"] = max(out.pop("ssim_frame_floor_source"), out.pop("ssim_frame_floor_mean"))
    return out


def rank1(query_features, query_pids, gallery_features, gallery_pids):
    """Fraction of queries whose most similar gallery image (cosine) shows their person."""
    best = np.argmax(metrics.cosine_similarity(query_features, gallery_features), axis=1)
    return float(np.mean(np.asarray(gallery_pids)[best] == np.asarray(query_pids)))


def translate(model, rgb, ir):
    """Module G on true pairs in inference mode (caffe-normalised [B, H, W, 3] each).

    Returns unit-range images at G's size {"rgb2ir", "ir2rgb": the source's content with
    the true pair's style, decoded in the target modality; "recon_rgb", "recon_ir": Eq. 4}.
    """
    real = {"rgb": rgb, "ir": ir}
    content = {m: model.content(real[m], training=False) for m in MODALITIES}
    style = {m: model.generators[m].encode_style(model.to_generation(real[m])) for m in MODALITIES}
    out = {f"recon_{m}": model.generators[m].decode(content[m], style[m]) for m in MODALITIES}
    for direction, (source, target) in DIRECTIONS.items():
        out[direction] = model.generators[target].decode(content[source], style[target])
    return out


def evaluate(model, embed, pairs, test, dataset_name, height, width, test_features=None, batch_size=64):
    """The ground-truth numbers of module G (module docstring) on ``pairs``.

    Args:
      model: a :class:`jsia_tf.models.jsia.JSIA`.
      embed: the judge, caffe-normalised images [B, H, W, 3] -> features [B, D].
      pairs: ``jsia_tf.data.synthetic.read_paired_test``'s arrays; pairs of persons
        outside ``test`` are left out (a RegDB trial's training persons).
      test: the test split (``records.ImageList``), whose images of each modality are
        the identity galleries.
      dataset_name: "sysu" or "regdb" (which cameras are RGB).
      height, width: the network input size.
      test_features: the judge's features of ``test`` when the caller has them.
    Returns:
      {"rgb2ir", "ir2rgb": :func:`fidelity`'s numbers + "identity_rank1",
      "identity_rank1_source", "chance"; "reconstruction": {modality: {"ssim", "l1",
      "ssim_floor" (the modality's mean image)}}, over the person;
      "pairs", "persons"}.
    Raises:
      ValueError: no pair shows a test person.
    """
    keep = np.isin(pairs["pids"], test.pids)
    if not keep.any():
        raise ValueError("no true pair shows a person of the test set")
    pids = pairs["pids"][keep]
    images = {"rgb": pairs["rgb"][keep], "ir": pairs["ir"][keep][..., None]}  # gray IR -> 3 channels
    person = tf.image.resize(tf.cast(pairs["person"][keep][..., None], tf.float32), model.generation_size,
                             method="area")
    person = person.numpy()[..., 0] >= 0.5  # [N, h, w] at G's size
    pixels, features = {}, {}
    for start in range(0, len(pids), batch_size):
        batch = {m: pipeline.preprocess(images[m][start:start + batch_size], height, width) for m in MODALITIES}
        # At G's size: the real images as G sees them, and what it makes of them.
        unit = {**{m: model.to_generation(batch[m]) for m in MODALITIES}, **translate(model, batch["rgb"], batch["ir"])}
        for name, x in unit.items():
            pixels.setdefault(name, []).append(pipeline.denormalize(from_unit_range(x)).numpy())
        for name in (*MODALITIES, *DIRECTIONS):  # the judge reads F's view
            features.setdefault(name, []).append(np.asarray(embed(batch[name] if name in MODALITIES
                                                                  else model.to_alignment(unit[name]))))
    pixels = {name: np.concatenate(x) for name, x in pixels.items()}
    features = {name: np.concatenate(x) for name, x in features.items()}
    if test_features is None:
        test_features = np.concatenate([np.asarray(embed(x)) for x in
                                        pipeline.eval_dataset(test, height, width, batch_size)])
    is_rgb = np.isin(test.cams, protocols.RGB_CAMS[dataset_name])
    gallery = {"rgb": is_rgb, "ir": ~is_rgb}
    out = {"pairs": int(len(pids)), "persons": int(len(np.unique(pids)))}
    for direction, (source, target) in DIRECTIONS.items():
        numbers = fidelity(pixels[direction], pixels[target], pixels[source], person)
        rows = gallery[target]
        args = (test_features[rows], test.pids[rows])
        numbers.update(identity_rank1=rank1(features[direction], pids, *args),
                       identity_rank1_source=rank1(features[source], pids, *args),
                       chance=1.0 / len(np.unique(test.pids[rows])))
        out[direction] = numbers
    out["reconstruction"] = {m: {"ssim": float(np.mean(ssim(pixels[f"recon_{m}"], pixels[m], person))),
                                 "l1": float(np.mean(l1(pixels[f"recon_{m}"], pixels[m], person))),
                                 "ssim_floor": float(np.mean(ssim(mean_image(pixels[m]), pixels[m], person)))}
                             for m in MODALITIES}
    return out


def scalars(numbers):
    """{TensorBoard tag under generation/: value} of :func:`evaluate`'s numbers (person-region
    SSIM and L1 unless the tag says frame)."""
    out = {}
    for direction in DIRECTIONS:
        for name in ("ssim", "ssim_floor", "ssim_frame", "l1", "identity_rank1", "identity_rank1_source"):
            out[f"generation/{direction}/{name}"] = numbers[direction][name]
    for m in MODALITIES:
        for name in ("ssim", "ssim_floor", "l1"):
            out[f"generation/recon_{m}/{name}"] = numbers["reconstruction"][m][name]
    return out


def summary_line(numbers):
    """One log line of :func:`evaluate`'s headline numbers."""
    parts = [f"{d} SSIM {numbers[d]['ssim']:.3f} (floor {numbers[d]['ssim_floor']:.3f}) identity rank-1 "
             f"{numbers[d]['identity_rank1']:.1%} (source {numbers[d]['identity_rank1_source']:.1%}, chance "
             f"{numbers[d]['chance']:.1%})" for d in DIRECTIONS]
    recon = ", ".join(f"{m} {numbers['reconstruction'][m]['ssim']:.3f} (floor "
                      f"{numbers['reconstruction'][m]['ssim_floor']:.3f})" for m in MODALITIES)
    return f"module G on {numbers['pairs']} true pairs: " + "; ".join(parts) + f"; self-reconstruction SSIM {recon}"
