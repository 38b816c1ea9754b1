"""Quality measures of generated images (paper Sec. 4.4, Table 4).

- FID (Heusel et al., NeurIPS 2017): the Frechet distance between Gaussians fitted
  to two sets of features (for FID proper, Inception pool features of real and
  generated images; the caller extracts them):
      ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)),
  computed as the reference implementations (TTUR, pytorch-fid) do.
  ``fid`` of two feature sets uses the exact low-rank form of the trace term when
  there are fewer images than dimensions (see ``fid``).
- MD, the identity-consistency measure: the mean L2 distance between the two
  images of each generated pair (cross-modality pairs that should show the same
  person). ``mean_pair_distance`` compares any representation (row i of one array
  and row i of the other are the pair); ``identity_distance`` is the MD of images
  that ``jsia_tf.analyze`` reports (its docstring defines it: the paper does not
  say how the distance is normalised).
- The FID feature extractor: InceptionV3's 2048-d average-pool features
  (``inception_model``, ``inception_features``), as in TTUR and pytorch-fid.
"""

import os

import keras
import numpy as np
import scipy.linalg
import tensorflow as tf

# Added to the diagonals when S1 S2 is singular (its square root is not finite),
# as in the reference implementations.
FID_EPS = 1e-6
# Largest |imaginary part| on the diagonal of (S1 S2)^(1/2) taken as rounding.
_IMAGINARY_TOLERANCE = 1e-3
# InceptionV3's input size, and its pool features' length.
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
# ITU-R BT.601 luma weights of R, G, B (the official JSIA code's gray conversion).
LUMA_RGB = (0.2989, 0.5870, 0.1140)


def feature_statistics(features):
    """Mean [D] and unbiased covariance [D, D] (float64) of ``features`` [N, D], N >= 2."""
    features = np.asarray(features)
    if features.ndim != 2 or features.dtype.kind not in "fiu" or len(features) < 2:
        raise ValueError(f"features must be a numeric array [N, D] with N >= 2; got {features.dtype} "
                         f"{features.shape}")
    features = features.astype(np.float64)
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=FID_EPS):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2): mu [D], sigma [D, D].

    Raises:
      ValueError: mismatched shapes, or a square root with a significant
        imaginary part (the covariances are not positive semi-definite).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    dim = mu1.shape[0]
    for name, value, shape in (("mu1", mu1, (dim,)), ("mu2", mu2, (dim,)), ("sigma1", sigma1, (dim, dim)),
                               ("sigma2", sigma2, (dim, dim))):
        if value.shape != shape:
            raise ValueError(f"{name} must be {shape} (mu1 has {dim} dimensions); got {value.shape}")
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)  # [D, D]
    if not np.isfinite(covmean).all():
        offset = eps * np.eye(dim)
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.max(np.abs(np.diagonal(covmean).imag))
        if imaginary > _IMAGINARY_TOLERANCE:
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has imaginary parts up to {imaginary:.3g}: "
                             "sigma1 and sigma2 must be positive semi-definite")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(features_a, features_b):
    """Frechet distance between Gaussians fitted to ``features_a`` [N, D] and ``features_b`` [M, D].

    With at most D images per set the covariances have rank < D and the trace term
    needs no D x D square root: with the centred features A [N, D] and B [M, D],
    S1 = A^T A / (N - 1) and S2 = B^T B / (M - 1), the non-zero eigenvalues of S1 S2
    are those of (A B^T)(A B^T)^T / ((N - 1)(M - 1)), so
    Tr((S1 S2)^(1/2)) = ||A B^T||_* / sqrt((N - 1)(M - 1)) (nuclear norm): exact, and
    about 100x faster than ``scipy.linalg.sqrtm`` for D = 2048.
    """
    mu_a, sigma_a = feature_statistics(features_a)
    mu_b, sigma_b = feature_statistics(features_b)
    if len(mu_a) != len(mu_b) or max(len(features_a), len(features_b)) > len(mu_a):
        return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
    a = np.asarray(features_a, np.float64) - mu_a  # [N, D], centred
    b = np.asarray(features_b, np.float64) - mu_b  # [M, D]
    trace_sqrt = np.linalg.norm(a @ b.T, ord="nuc") / np.sqrt((len(a) - 1) * (len(b) - 1))
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt)


def mean_pair_distance(a, b):
    """MD (Table 4): mean over i of ||a[i] - b[i]||_2, a and b [N, ...] with N >= 1.

    Each row pair is the two images of one generated pair (pixels or embeddings,
    as the caller passes); any trailing shape is flattened.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 1 or len(a) == 0:
        raise ValueError(f"a and b must have the same shape [N, ...], N >= 1; got {a.shape} and {b.shape}")
    return float(np.mean(np.linalg.norm((a - b).reshape(len(a), -1), axis=1)))


def identity_distance(images_a, images_b):
    """MD of image pairs (Table 4), as ``jsia_tf.analyze`` reports it.

    Each image is mapped to [0, 1] and to gray (``LUMA_RGB``) before comparing:
    the two images of a cross-modality pair differ in colour by construction (an
    infrared image has none), and identity consistency is about the person
    (pose, shape, clothing brightness), not about the modality. The L2 distance
    of a pair is divided by sqrt(H W), which makes it the root-mean-square gray
    difference: in [0, 1] and independent of the image size. The paper (Sec. 4.5)
    says "L2 distance of images in a pair" and does not state a normalisation,
    so its numbers are not comparable to these.

    Args:
      images_a, images_b: uint8 RGB [N, H, W, 3]; row i of each is one pair.
    Returns:
      the mean over pairs, a float in [0, 1].
    """
    gray_a, gray_b = (np.asarray(x, np.float64) / 255.0 @ np.asarray(LUMA_RGB) for x in (images_a, images_b))
    if gray_a.ndim != 3:
        raise ValueError(f"images must be RGB [N, H, W, 3]; got {np.shape(images_a)} and {np.shape(images_b)}")
    scale = np.sqrt(gray_a[0].size)  # sqrt(H W)
    return mean_pair_distance(gray_a / scale, gray_b / scale)


def inception_model(weights="imagenet"):
    """InceptionV3 without its classifier, average-pooled: [N, 299, 299, 3] -> [N, 2048].

    Args:
      weights: "imagenet" (keras.applications downloads the notop weights once into
        ``$KERAS_HOME``) or the path of an InceptionV3 (include_top=False) weights
        file, ``.weights.h5`` or the downloaded ``.h5``.
    Raises:
      ValueError: the file does not exist, does not fit the network, or the
        ImageNet weights cannot be fetched; the message names ``inception_weights``.
    """
    if weights != "imagenet" and not os.path.isfile(weights):
        raise ValueError(f"inception_weights={weights!r}: no such file; expected 'imagenet' or an InceptionV3 "
                         "(include_top=False) weights file")
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # FID features in float32 whatever the run trained in
    try:
        return keras.applications.InceptionV3(include_top=False, pooling="avg", weights=weights,
                                              input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3))
    except Exception as err:  # offline, keras.utils.get_file raises a plain Exception
        hint = ("the ImageNet weights could not be fetched; pass a local weights file" if weights == "imagenet"
                else "expected InceptionV3 (include_top=False) weights")
        raise ValueError(f"inception_weights={weights!r}: {hint} ({err})") from err
    finally:
        keras.mixed_precision.set_global_policy(policy)


def inception_features(model, images, batch_size=32):
    """Pool features [N, 2048] (float64) of uint8 RGB images [N, H, W, 3], any H and W.

    Images are resized to 299x299 (bilinear) and scaled to [-1, 1]
    (``keras.applications.inception_v3.preprocess_input``), ``batch_size`` at a time.
    """
    features = []
    for start in range(0, len(images), batch_size):
        batch = tf.image.resize(tf.cast(images[start:start + batch_size], tf.float32), (INCEPTION_SIZE, INCEPTION_SIZE))
        batch = keras.applications.inception_v3.preprocess_input(batch)  # [b, 299, 299, 3] in [-1, 1]
        features.append(model(batch, training=False).numpy())
    return np.concatenate(features).astype(np.float64)
