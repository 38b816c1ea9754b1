"""Quality measures of generated images (paper Sec. 4.4, Table 4).

- FID (Heusel et al., NeurIPS 2017): the Frechet distance between Gaussians fitted
  to two sets of features (for FID proper, Inception pool features of real and
  generated images; the caller extracts them):
      ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)),
  computed as the reference implementations (TTUR, pytorch-fid) do.
- MD, the identity-consistency measure: the mean L2 distance between the two
  images of each generated pair (cross-modality pairs that should show the same
  person). Which representation is compared (pixels, re-ID embeddings) is the
  caller's choice: row i of one array and row i of the other are the pair.
"""

import numpy as np
import scipy.linalg

# Added to the diagonals when S1 S2 is singular (its square root is not finite),
# as in the reference implementations.
FID_EPS = 1e-6
# Largest |imaginary part| on the diagonal of (S1 S2)^(1/2) taken as rounding.
_IMAGINARY_TOLERANCE = 1e-3


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
    """Frechet distance between Gaussians fitted to ``features_a`` [N, D] and ``features_b`` [M, D]."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def mean_pair_distance(a, b):
    """MD (Table 4): mean over i of ||a[i] - b[i]||_2, a and b [N, ...] with N >= 1.

    Each row pair is the two images of one generated pair (pixels or embeddings,
    as the caller passes); any trailing shape is flattened.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 1 or len(a) == 0:
        raise ValueError(f"a and b must have the same shape [N, ...], N >= 1; got {a.shape} and {b.shape}")
    return float(np.mean(np.linalg.norm((a - b).reshape(len(a), -1), axis=1)))
