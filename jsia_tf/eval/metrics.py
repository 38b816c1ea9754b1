"""Ranking metrics for cross-modal re-ID: CMC, mAP and mINP (paper Sec. 4.1).

Ranking. Features are L2-normalised and compared by their dot product (cosine
similarity). Each query orders its gallery by a *stable* sort on -similarity,
so ties keep gallery order and every result is deterministic.

Validity. ``valid[q, g] = False`` removes gallery image ``g`` from query ``q``'s
ranking entirely, as the SYSU-MM01 same-place rule requires (Wu et al., ICCV
2017: a camera-3 query never sees camera-2 images).

Per query, over its ranking of valid gallery images:
- CMC rank, two flavours:
  - image-level (RegDB, the AGW evaluation): the 1-based position of the first
    correct image;
  - identity-level (the official SYSU-MM01 evaluation): 1 + the number of
    distinct wrong identities ranked before the first correct image.
- AP: the mean, over every valid gallery image of the query's identity, of the
  precision at that image's position.
- INP (Ye et al., AGW, TPAMI 2021): |positives| / 1-based position of the last
  positive.

Queries without any valid positive are skipped by CMC, mAP and mINP alike, as the
AGW evaluation does (the official SYSU-MM01 code has no such query on the real
data; it would fail on one).
"""

import concurrent.futures
import dataclasses
import os

import numpy as np

# CMC ranks reported by the SYSU-MM01 and RegDB literature.
CMC_RANKS = (1, 5, 10, 20)

# Queries per block: bounds the [block, G] work arrays (about 12 MB each for a
# 3,010-image multi-shot gallery); blocks are the units of the worker threads.
_QUERY_BLOCK = 512


def l2_normalize(features, eps=1e-12):
    """Rows of ``features`` [N, D] scaled to unit L2 norm (zero rows stay zero)."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)  # [N, 1]
    return features / np.maximum(norms, eps)


def cosine_similarity(query_features, gallery_features):
    """Cosine similarity [Q, G] (float64) of query [Q, D] and gallery [G, D] rows."""
    return l2_normalize(query_features) @ l2_normalize(gallery_features).T


@dataclasses.dataclass(frozen=True)
class QueryScores:
    """Per-query results of one ranking.

    Attributes:
      rank: [Q] int64, 1-based CMC rank of the first correct match (image- or
        identity-level, as computed); 0 for a query without a valid positive.
      ap: [Q] float64 average precision (0 without a valid positive).
      inp: [Q] float64 inverse negative penalty (0 without a valid positive).
    """

    rank: np.ndarray
    ap: np.ndarray
    inp: np.ndarray

    @property
    def has_positive(self):
        """[Q] bool: the query has at least one valid positive (it is scored)."""
        return self.rank > 0

    @classmethod
    def concatenate(cls, parts):
        """Scores of several query sets (blocks, trials) as one."""
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))


def score_similarity(similarity, query_labels, gallery_labels, valid=None, identity_level=False):
    """Ranks each query's gallery and scores it.

    Args:
      similarity: [Q, G] float, higher is more similar.
      query_labels: [Q] int person ids.
      gallery_labels: [G] int person ids.
      valid: optional [Q, G] bool; False removes the gallery image from that
        query's ranking. None keeps every image.
      identity_level: True for the official SYSU-MM01 CMC (distinct wrong
        identities before the first hit), False for the image-level CMC.

    Returns:
      QueryScores over the Q queries, in query order.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    num_queries, num_gallery = similarity.shape
    if num_gallery == 0:
        raise ValueError("the gallery is empty: there is nothing to rank")
    if query_labels.shape != (num_queries,) or gallery_labels.shape != (num_gallery,):
        raise ValueError(
            f"similarity is {similarity.shape}, so query_labels must be ({num_queries},) and "
            f"gallery_labels ({num_gallery},); got {query_labels.shape} and {gallery_labels.shape}"
        )
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != similarity.shape:
            raise ValueError(f"valid mask is {valid.shape}, similarity is {similarity.shape}")

    # Identities as 0 .. U-1, for the identity-level CMC.
    gallery_identity = np.unique(gallery_labels, return_inverse=True)[1] if identity_level else None

    def score_rows(start):
        rows = slice(start, start + _QUERY_BLOCK)
        return _score_block(similarity[rows], query_labels[rows], gallery_labels,
                            None if valid is None else valid[rows], gallery_identity)

    # NumPy releases the GIL in sorts and element-wise ops: blocks run in parallel.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        parts = list(pool.map(score_rows, range(0, max(num_queries, 1), _QUERY_BLOCK)))
    return QueryScores.concatenate(parts)


def _stable_argsort(keys):
    """Stable argsort of each row of ``keys`` [q, G]: equal finite keys keep column order.

    NumPy's default introsort is several times faster than its stable sort and
    gives the same order on rows without ties, so only rows with equal finite
    keys are sorted again. (Infinite keys mark removed images, whose order
    among themselves is never read.)
    """
    order = np.argsort(keys, axis=1)
    ranked = np.sort(keys, axis=1)  # = keys in rank order, without a slow gather
    tied = np.any((ranked[:, 1:] == ranked[:, :-1]) & np.isfinite(ranked[:, 1:]), axis=1)  # [q]
    if tied.any():
        order[tied] = np.argsort(keys[tied], axis=1, kind="stable")
    return order


def _score_block(similarity, query_labels, gallery_labels, valid, gallery_identity):
    """QueryScores of one block of queries; shapes [q, G] unless noted.

    ``gallery_identity`` [G] numbers the gallery identities 0 .. U-1 for the
    identity-level CMC, or is None for the image-level one.
    """
    num_queries, num_gallery = similarity.shape
    if valid is None:
        order = _stable_argsort(-similarity)
        matches = gallery_labels[order] == query_labels[:, None]
    else:
        # Invalid images sort after every valid one, which hold positions 0 .. n_valid - 1.
        order = _stable_argsort(np.where(valid, -similarity, np.inf))
        is_valid = np.arange(num_gallery) < np.sum(valid, axis=1, keepdims=True)  # [q, G] in rank order
        matches = (gallery_labels[order] == query_labels[:, None]) & is_valid
    hits = np.cumsum(matches, axis=1, dtype=np.int32)  # positives at or above each position
    num_positives = hits[:, -1]  # [q]
    has_positive = num_positives > 0
    first = np.argmax(matches, axis=1)  # [q] 0-based position of the first positive
    last = num_gallery - 1 - np.argmax(matches[:, ::-1], axis=1)  # [q] ... of the last one

    precision = hits / np.arange(1, num_gallery + 1)
    ap = np.sum(precision, axis=1, where=matches) / np.maximum(num_positives, 1)
    inp = num_positives / (last + 1)

    if gallery_identity is None:
        rank = first + 1
    else:
        # Mark, in a [q, U] table, the identities ranked before the first hit: all
        # wrong and valid (invalid images come after the valid first hit).
        before_first = np.arange(num_gallery) < first[:, None]  # [q, G]
        query_row = np.broadcast_to(np.arange(num_queries)[:, None], order.shape)
        seen = np.zeros((num_queries, gallery_identity.max() + 1), dtype=bool)
        seen[query_row[before_first], gallery_identity[order][before_first]] = True
        rank = 1 + np.sum(seen, axis=1)

    # ap and inp are already 0 without a positive; rank needs the mark.
    return QueryScores(rank=np.where(has_positive, rank, 0).astype(np.int64), ap=ap, inp=inp)


def summarize(scores, ranks=CMC_RANKS):
    """CMC at ``ranks``, mAP and mINP (fractions in [0, 1]) over the scored queries.

    Pooling queries of several trials equals averaging the trials when each trial
    scores the same queries, as the SYSU-MM01 protocol does.

    Returns:
      ``{"cmc": {"1": r1, "5": r5, ...}, "mAP": m, "mINP": i}`` of Python floats.

    Raises:
      ValueError: no query has a valid positive in its gallery.
    """
    scored = scores.has_positive
    if not scored.any():
        raise ValueError(f"none of the {len(scored)} queries has a correct match in its gallery")
    rank = scores.rank[scored]
    return {
        "cmc": {str(k): float(np.mean(rank <= k)) for k in ranks},
        "mAP": float(np.mean(scores.ap[scored])),
        "mINP": float(np.mean(scores.inp[scored])),
    }


def format_summary(summary):
    """``summarize``'s dict as one readable line of percentages."""
    cmc = " ".join(f"R{k} {100 * v:.2f}%" for k, v in summary["cmc"].items())
    return f"{cmc} mAP {100 * summary['mAP']:.2f}% mINP {100 * summary['mINP']:.2f}%"


def evaluate(query_features, gallery_features, query_labels, gallery_labels, valid=None, identity_level=False):
    """Cosine ranking of a gallery for each query, summarised: see ``summarize``."""
    similarity = cosine_similarity(query_features, gallery_features)
    return summarize(score_similarity(similarity, query_labels, gallery_labels, valid, identity_level))
