"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017), the optional post-processing of the ranking.

The steps, over the N = Q + G query and gallery images taken together (a probe p
is any of them), follow the paper and its reference implementation
(github.com/zhunzhong07/person-re-ranking):

1. Original distance. Features are L2-normalised (as ``metrics`` ranks them);
   d(p, j) = ||x_p - x_j||^2 = 2 - 2 cos(x_p, x_j), clipped at 0 against
   rounding (and exactly 0 from p to itself), then each row is divided by its
   maximum (the reference code divides each column of the symmetric [N, N]
   matrix by its maximum and transposes). N(p, k), p's k nearest images, starts
   with p itself, then ascending distance, ties in image order (stable sort):
   p stays first even among exact duplicates, so p is in every set below.
2. k-reciprocal set (Zhong Eq. 4): R(p, k) = {j in N(p, k+1) : p in N(j, k+1)}.
3. Expansion (Zhong Eq. 6): R*(p) = R(p, k1) united with R(c, round(k1/2)) of each c in
   R(p, k1) with |R(c, round(k1/2)) & R(p, k1)| > 2/3 |R(c, round(k1/2))|
   (round halves to even, as ``np.around`` in the reference code).
4. Gaussian kernel encoding (Zhong Eq. 7): V[p, j] = exp(-d(p, j)) over j in R*(p),
   zero elsewhere, each row normalised to sum 1.
5. Local query expansion (Zhong Eq. 11): V[p] is replaced by the mean of V over N(p, k2)
   (for k2 = 1 that is V[p] itself).
6. Jaccard distance (Zhong Eq. 10): d_J(p, g) = 1 - sum_j min(V[p, j], V[g, j]) /
   sum_j max(V[p, j], V[g, j]), where the max-sum is 2 - the min-sum because
   every row of V sums to 1.
7. Final distance (Zhong Eq. 12): (1 - lambda) d_J + lambda d, query rows x gallery
   columns.

Everything is float64 (the reference code stores V in float16). V is a sparse
matrix throughout; the [N, N] distances are computed in blocks of rows for the
neighbour orders, then only where needed (V's entries, query x gallery), so
memory stays O(N * block) rather than O(N^2).
"""

import numpy as np
import scipy.sparse

from jsia_tf.config import RERANK_K1 as DEFAULT_K1, RERANK_K2 as DEFAULT_K2, RERANK_LAMBDA as DEFAULT_LAMBDA
from jsia_tf.eval import metrics

PARAMETERS = ("k1", "k2", "lambda_value")

# Bounds the temporary arrays: a block of distance rows, or of feature rows
# gathered for V's entries, holds about this many numbers (64 MB of float64);
# one Jaccard block about this many (query entry, gallery entry) pairs.
_BLOCK_ENTRIES = 1 << 23
_BLOCK_PAIRS = 1 << 22


def check_parameters(k1=DEFAULT_K1, k2=DEFAULT_K2, lambda_value=DEFAULT_LAMBDA):
    """Raises ValueError naming ``k1``, ``k2`` or ``lambda_value`` if out of range."""
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, (int, float, np.number)) \
            or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be a number in [0, 1]; got {lambda_value!r}")


def k_reciprocal_rerank(query_features, gallery_features, k1=DEFAULT_K1, k2=DEFAULT_K2,
                        lambda_value=DEFAULT_LAMBDA):
    """Re-ranked distance between queries and gallery (module docstring, steps 1-7).

    Args:
      query_features: [Q, D] float.
      gallery_features: [G, D] float.
      k1: size of the k-reciprocal neighbourhood (Zhong Eqs. 4-6).
      k2: neighbours averaged by the local query expansion (Zhong Eq. 11); 1 disables it.
      lambda_value: weight of the original distance in the final one (Zhong Eq. 12);
        1 returns the original distance (step 1), 0 the Jaccard distance.

    Returns:
      [Q, G] float64 distance in [0, 1], lower is more similar.
    """
    check_parameters(k1, k2, lambda_value)
    query_features = _check_features("query_features", query_features)
    gallery_features = _check_features("gallery_features", gallery_features)
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(f"query_features have {query_features.shape[1]} dimensions, "
                         f"gallery_features {gallery_features.shape[1]}")
    num_queries = len(query_features)
    features = metrics.l2_normalize(np.concatenate([query_features, gallery_features]))  # [N, D]

    neighbours, row_max = _nearest_neighbours(features, max(k1 + 1, k2))  # [N, K], [N]
    expanded = _expanded_reciprocal_sets(neighbours, k1)  # [N, N] 0/1, R*(p) per row
    encoding = _gaussian_encoding(features, row_max, expanded)  # V [N, N]
    if k2 > 1:
        encoding = _local_query_expansion(encoding, neighbours[:, :k2])
    jaccard = _jaccard_distance(encoding[:num_queries], encoding[num_queries:])  # [Q, G]
    original = _squared_distance(features[:num_queries], features[num_queries:]) / row_max[:num_queries, None]
    return (1 - lambda_value) * jaccard + lambda_value * original


def _check_features(name, features):
    features = np.asarray(features)
    if features.ndim != 2 or features.dtype.kind != "f" or len(features) == 0:
        raise ValueError(f"{name} must be a non-empty float array [N, D]; got {features.dtype} {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return features


def _squared_distance(a, b):
    """[n, m] squared Euclidean distance 2 - 2 a b^T of unit rows a [n, D], b [m, D]."""
    return np.maximum(2 - 2 * a @ b.T, 0)


def _nearest_neighbours(features, k):
    """N(p, k) for every image p and the maxima of the distance rows (step 1).

    Returns:
      neighbours: [N, min(k, N)] int64, p first, then nearest first.
      row_max: [N] float64, the maximum of each row of the unnormalised distance
        (at least the smallest positive float: a zero row means every feature is
        the same point, and all its distances stay 0).
    """
    n = len(features)
    k = min(k, n)
    neighbours, row_max = np.empty((n, k), dtype=np.int64), np.empty(n)
    block = max(1, _BLOCK_ENTRIES // n)
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        distance = _squared_distance(features[rows], features)  # [rows, N]
        row_max[rows] = np.maximum(distance.max(axis=1), np.finfo(np.float64).tiny)
        distance[np.arange(len(rows)), rows] = -1  # p first, even before exact duplicates (distance 0)
        neighbours[rows] = _smallest_stable(distance, k)
    return neighbours, row_max


def _smallest_stable(keys, k):
    """[rows, k] columns of the k smallest ``keys`` [rows, N] per row, ascending,
    equal keys in column order (what a stable argsort's first k columns hold)."""
    if k == keys.shape[1]:
        return np.argsort(keys, axis=1, kind="stable")
    # The k smallest in any order, then sorted by (key, column). Only a tie across
    # the k-th place leaves the choice of columns to argpartition: such rows take
    # the full stable sort.
    picked = np.argpartition(keys, k - 1, axis=1)[:, :k]  # [rows, k]
    picked_keys = np.take_along_axis(keys, picked, axis=1)
    order = np.lexsort((picked, picked_keys), axis=1)
    smallest = np.take_along_axis(picked, order, axis=1)
    kth = picked_keys.max(axis=1, keepdims=True)
    tied = np.sum(keys <= kth, axis=1) > k  # [rows] more keys reach the k-th value than fit
    if tied.any():
        smallest[tied] = np.argsort(keys[tied], axis=1, kind="stable")[:, :k]
    return smallest


def _indicator(rows, columns, n):
    """[n, n] sparse 0/1 float matrix with ones at (rows[i], columns[i])."""
    return scipy.sparse.csr_array((np.ones(len(rows)), (rows, columns)), shape=(n, n))


def _reciprocal_sets(neighbours, k):
    """[N, N] sparse 0/1: row p marks R(p, k) = {j in N(p, k+1) : p in N(j, k+1)} (Zhong Eq. 4)."""
    n = len(neighbours)
    top = neighbours[:, :k + 1]  # [N, min(k+1, N)]
    forward = _indicator(np.repeat(np.arange(n), top.shape[1]), top.ravel(), n)  # j in N(p, k+1)
    return forward.multiply(forward.T).tocsr()


def _expanded_reciprocal_sets(neighbours, k1):
    """[N, N] sparse 0/1: row p marks R*(p), R(p, k1) expanded by the 2/3 rule (Zhong Eq. 6)."""
    reciprocal = _reciprocal_sets(neighbours, k1)  # R(p, k1)
    half = _reciprocal_sets(neighbours, int(np.around(k1 / 2)))  # R(c, k1/2)
    # overlap[p, c] = |R(p, k1) & R(c, k1/2)|, kept for candidates c in R(p, k1).
    overlap = (reciprocal @ half.T).multiply(reciprocal).tocoo()
    half_size = np.asarray(half.sum(axis=1)).ravel()  # [N] |R(c, k1/2)|
    accepted = 3 * overlap.data > 2 * half_size[overlap.col]  # integer counts: exact 2/3 test
    candidates = _indicator(overlap.row[accepted], overlap.col[accepted], len(neighbours))
    expanded = reciprocal + candidates @ half  # counts > 0 on the union
    expanded.data[:] = 1.0
    return expanded


def _gaussian_encoding(features, row_max, expanded):
    """V (Zhong Eq. 7) as [N, N] sparse CSR with rows summing to 1: exp(-d(p, j)) on the
    entries (p, j) of ``expanded``, d normalised by ``row_max`` [N] (step 1)."""
    n = len(features)
    rows = np.repeat(np.arange(n), np.diff(expanded.indptr))  # [nnz] p of each entry
    columns = expanded.indices  # [nnz] j of each entry
    distance = np.empty(expanded.nnz)
    block = max(1, _BLOCK_ENTRIES // features.shape[1])
    for start in range(0, expanded.nnz, block):
        p, j = rows[start:start + block], columns[start:start + block]
        dot = np.einsum("ed,ed->e", features[p], features[j])  # [e] cosine of each entry
        distance[start:start + block] = np.where(p == j, 0, np.maximum(2 - 2 * dot, 0)) / row_max[p]
    weights = np.exp(-distance)
    row_sum = np.bincount(rows, weights=weights, minlength=n)  # [N], >= 1: p is in R*(p)
    return scipy.sparse.csr_array((weights / row_sum[rows], columns, expanded.indptr), shape=(n, n))


def _local_query_expansion(encoding, neighbours):
    """V with row p replaced by the mean of the rows of N(p, k2) (Zhong Eq. 11); neighbours [N, k2]."""
    n, k2 = neighbours.shape
    mean = scipy.sparse.csr_array((np.full(n * k2, 1 / k2), (np.repeat(np.arange(n), k2), neighbours.ravel())),
                                  shape=(n, n))
    return (mean @ encoding).tocsr()


def _jaccard_distance(query_encoding, gallery_encoding):
    """d_J [Q, G] (Zhong Eq. 10) of sparse V rows: query [Q, N] and gallery [G, N].

    sum_j min(V[q, j], V[g, j]) runs over the columns j that both rows hold: every
    (query entry, gallery entry) pair of a column is formed (the gallery side read
    column by column, CSC) and its minimum added to cell (q, g). Blocks of queries
    bound the number of pairs held at once.
    """
    query_encoding = query_encoding.tocsr()
    gallery_encoding = scipy.sparse.csc_array(gallery_encoding)
    num_queries, num_gallery = query_encoding.shape[0], gallery_encoding.shape[0]
    column_size = np.diff(gallery_encoding.indptr)  # [N] gallery entries per column
    pairs_per_entry = column_size[query_encoding.indices]  # [nnz_q]
    row_of_entry = np.repeat(np.arange(num_queries), np.diff(query_encoding.indptr))  # [nnz_q]
    pairs_per_row = np.bincount(row_of_entry, weights=pairs_per_entry, minlength=num_queries).astype(np.int64)
    pairs_before_row = np.concatenate([[0], np.cumsum(pairs_per_row)])  # [Q + 1]
    overlap = np.empty((num_queries, num_gallery))
    start = 0
    while start < num_queries:
        stop = max(start + 1, np.searchsorted(pairs_before_row, pairs_before_row[start] + _BLOCK_PAIRS, "right") - 1)
        entries = slice(query_encoding.indptr[start], query_encoding.indptr[stop])
        counts = pairs_per_entry[entries]  # [e] gallery entries paired with each query entry
        query_row = row_of_entry[entries] - start  # [e]
        # Position of each pair's gallery entry in the CSC arrays: its column's start + its rank there.
        first_pair = np.cumsum(counts) - counts  # [e]
        pair_offset = np.arange(counts.sum()) - np.repeat(first_pair, counts)  # [p]
        gallery_entry = np.repeat(gallery_encoding.indptr[query_encoding.indices[entries]], counts) + pair_offset
        smaller = np.minimum(np.repeat(query_encoding.data[entries], counts), gallery_encoding.data[gallery_entry])
        cell = np.repeat(query_row, counts) * num_gallery + gallery_encoding.indices[gallery_entry]  # [p]
        overlap[start:stop] = np.bincount(cell, weights=smaller, minlength=(stop - start) * num_gallery).reshape(
            stop - start, num_gallery)
        start = stop
    return 1 - overlap / (2 - overlap)
