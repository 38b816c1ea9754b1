"""Fig. 4's statistics: how far apart the same person's and different persons' cross-modality
similarities lie. Used by the training histograms (``jsia_tf.train``) and the figure
(``jsia_tf.analyze``).
"""

import numpy as np

from jsia_tf.eval import protocols

# Fig. 4 histograms: bins of width 0.04 over the cosine range.
HISTOGRAM_BINS = 50
SIMILARITY_RANGE = (-1.0, 1.0)


def cross_modality_similarities(features, test, dataset_name, max_inter=None, seed=0):
    """Fig. 4's two samples: cosine similarities of every (IR, RGB) test pair.

    Args:
      features: L2-normalised Eq. 17 features [N, D], row i embeds ``test.paths[i]``.
      test: the test ImageList; dataset_name: "regdb" or "sysu" (which cameras are RGB).
      max_inter: keep a random sample (``seed``) of at most this many inter-person values.
    Returns:
      (intra-person similarities [P], inter-person similarities [Q]).
    """
    is_rgb = np.isin(test.cams, protocols.RGB_CAMS[dataset_name])
    similarity = features[~is_rgb] @ features[is_rgb].T  # [N_ir, N_rgb]
    same = test.pids[~is_rgb][:, None] == test.pids[is_rgb][None, :]  # [N_ir, N_rgb]
    inter = similarity[~same]
    if max_inter is not None and inter.size > max_inter:
        inter = np.random.default_rng(seed).choice(inter, max_inter, replace=False)
    return similarity[same], inter


def overlap_area(a, b, bins=HISTOGRAM_BINS, value_range=SIMILARITY_RANGE):
    """Area shared by the histogram densities of ``a`` and ``b``: sum over bins of min(p_a, p_b) * width.

    1 for identically distributed samples (same bins), 0 when no bin holds both.
    """
    p_a, edges = np.histogram(a, bins=bins, range=value_range, density=True)
    p_b, _ = np.histogram(b, bins=edges, density=True)
    return float(np.sum(np.minimum(p_a, p_b) * np.diff(edges)))
