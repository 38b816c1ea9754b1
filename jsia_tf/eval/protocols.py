"""The SYSU-MM01 and RegDB evaluation protocols (paper Sec. 4.1).

Inputs are the test set as arrays: ``features`` [N, D] float, ``labels`` [N] int
person ids as written in the dataset, ``cams`` [N] int camera ids and, for
SYSU-MM01, ``image_index`` [N] int (1-based position of the image in its sorted
``camX/PPPP/`` folder, what ``rand_perm_cam.mat`` indexes).

SYSU-MM01 (Wu et al., ICCV 2017), as the official evaluation runs it:
- Queries: every IR image (cameras 3, 6). Indoor search keeps the persons seen by
  the indoor RGB cameras 1, 2 (the official ``test_id_indoor.mat``: 56 ids, 2,208
  queries) and, like the official code, queries of both IR cameras.
- Gallery of trial t: for each (person, gallery camera), the first 1 (single-shot)
  or 10 (multi-shot) images of row t of that person's random order in that
  camera; cameras 1, 2, 4, 5 (all-search) or 1, 2 (indoor-search). The orders
  come from the official ``rand_perm_cam.mat`` when given (numbers comparable
  with published ones, image for image), otherwise from a seeded draw.
- Same-place rule: IR camera 3 and RGB camera 2 film the same room, so a cam-3
  query is never ranked against cam-2 images.
- Identity-level CMC, AP over every gallery image of the query's person in the
  trial (``metrics``), 10 trials. Every trial scores the same queries, so pooling
  the queries of all trials is the official average over trials.
Gallery images are listed in feature-file order; ties in similarity keep it.

RegDB (the AGW protocol): visible->thermal (``v2t``) ranks all thermal test
images for each visible test image, thermal->visible (``t2v``) the reverse;
image-level CMC, mAP, mINP. One trial per call: each trial is its own model.

Re-ranking (``rerank``): None ranks by cosine similarity; a dict of
``jsia_tf.eval.rerank.k_reciprocal_rerank`` arguments (``k1``, ``k2``,
``lambda_value``; missing ones take the paper's defaults) ranks by the
k-reciprocal re-ranked distance instead, nearest first. Re-ranking uses the
neighbourhoods of the whole query set and gallery, so each SYSU-MM01 trial is
re-ranked on its own gallery; the same-place rule then removes images from the
re-ranked order (it does not change the neighbourhoods).

Every input problem raises ``ValueError`` (``DatasetError`` for the
``rand_perm_cam.mat`` file) with a message naming the array or file.
"""

import dataclasses
import os

from absl import logging
import numpy as np
import scipy.io

from jsia_tf import config
from jsia_tf.data.records import (
    REGDB_THERMAL_CAM,
    REGDB_VISIBLE_CAM,
    SYSU_INDOOR_RGB_CAMS,
    SYSU_IR_CAMS,
    SYSU_RGB_CAMS,
    DatasetError,
)
from jsia_tf.eval import metrics
from jsia_tf.eval import rerank as reranking

PROTOCOLS = config.DATASETS

SYSU_CAMS = tuple(sorted(SYSU_RGB_CAMS + SYSU_IR_CAMS))  # 1..6
SYSU_MODES = config.SYSU_MODES
SYSU_GALLERY_CAMS = dict(zip(SYSU_MODES, (SYSU_RGB_CAMS, SYSU_INDOOR_RGB_CAMS)))  # search mode -> cameras
SYSU_SHOTS = config.SYSU_SHOTS
SYSU_TRIALS = config.SYSU_TRIALS
SYSU_SAME_ROOM = config.SYSU_SAME_ROOM

REGDB_DIRECTIONS = config.REGDB_DIRECTIONS
# Direction -> (query camera, gallery camera).
REGDB_DIRECTION_CAMS = dict(zip(REGDB_DIRECTIONS, ((REGDB_VISIBLE_CAM, REGDB_THERMAL_CAM),
                                                   (REGDB_THERMAL_CAM, REGDB_VISIBLE_CAM))))


def load_rand_perm_cam(path):
    """Reads the official SYSU-MM01 ``rand_perm_cam.mat`` (see sysu_eval/README.md).

    Returns:
      dict ``(cam, pid) -> int64 [10, n]`` for every person of the file (333 in
      cameras 1, 2, 6; 533 in 3, 4, 5): row t is trial t's random order of the
      1-based indices of the n images in ``camX/PPPP/``; n = 0 for a person
      absent from the camera.

    Raises:
      DatasetError: the file is unreadable or not of that form; names the path.
    """
    path = os.fspath(path)
    try:
        table = scipy.io.loadmat(path).get("rand_perm_cam")
    except (OSError, ValueError, scipy.io.matlab.MatReadError) as e:
        raise DatasetError(f"cannot read {path} as a MATLAB .mat file: {e}") from e
    if table is None or table.dtype != object or table.shape != (len(SYSU_CAMS), 1):
        found = "no such key" if table is None else f"{table.dtype} {table.shape}"
        raise DatasetError(
            f"{path}: expected key 'rand_perm_cam' holding an object array "
            f"[{len(SYSU_CAMS)}, 1], one entry per camera; got {found}"
        )
    orders = {}
    for cam, (persons,) in zip(SYSU_CAMS, table):
        if persons.dtype != object or persons.ndim != 2 or persons.shape[1] != 1:
            raise DatasetError(
                f"{path}: camera {cam} should hold an object array [num_pids, 1]; got {persons.shape}")
        for pid, (order,) in enumerate(persons, start=1):
            if order.size == 0:  # stored as [0, 0] or [10, 0]
                orders[(cam, pid)] = np.zeros((SYSU_TRIALS, 0), dtype=np.int64)
                continue
            n = order.shape[-1]
            if (order.shape != (SYSU_TRIALS, n) or order.dtype.kind not in "iu"
                    or np.any(np.sort(order, axis=1) != np.arange(1, n + 1))):
                raise DatasetError(
                    f"{path}: camera {cam}, person {pid}: expected {SYSU_TRIALS} integer rows that each "
                    f"permute 1..n; got {order.dtype} {order.shape}"
                )
            orders[(cam, pid)] = order.astype(np.int64)
    return orders


@dataclasses.dataclass(frozen=True)
class SysuSplit:
    """Query and per-trial gallery of one SYSU-MM01 setting, as feature rows.

    Attributes:
      queries: [Q] int64 rows of the query images, ascending.
      galleries: one [G_t] int64 array of gallery rows per trial, ascending.
    """

    queries: np.ndarray
    galleries: tuple


def sysu_split(labels, cams, image_index, *, mode="all", shots=1, rand_perm=None, trials=SYSU_TRIALS, seed=0):
    """Picks the queries and each trial's gallery of a SYSU-MM01 setting.

    Args:
      labels, cams, image_index: [N] int arrays (see the module docstring).
      mode: "all" or "indoor" search.
      shots: 1 (single-shot) or 10 (multi-shot).
      rand_perm: path of the official ``rand_perm_cam.mat``, or None for a
        seeded draw: trial t permutes each (camera, person)'s images, in sorted
        (camera, person) order, with ``np.random.default_rng(seed + t)``.
      trials: number of trials (at most the 10 rows of ``rand_perm_cam.mat``).
      seed: seed of the draw when ``rand_perm`` is None.
    """
    config.check_choice("sysu_mode", mode, SYSU_MODES)
    config.check_choice("sysu_shots", shots, SYSU_SHOTS)
    if not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"trials must be a positive integer; got {trials!r}")
    labels, cams, image_index = _check_int_arrays(
        len(np.atleast_1d(labels)), labels=labels, cams=cams, image_index=image_index)
    _check_values("cams", cams, SYSU_CAMS)
    if len(image_index) and image_index.min() < 1:
        raise ValueError(f"image_index is 1-based (position in camX/PPPP/); found {image_index.min()}")

    is_gallery_cam = np.isin(cams, SYSU_GALLERY_CAMS[mode])
    is_query = np.isin(cams, SYSU_IR_CAMS)
    if mode == "indoor":
        is_query &= np.isin(labels, labels[is_gallery_cam])  # test_id_indoor: persons seen by cams 1, 2
    queries = np.flatnonzero(is_query)
    if queries.size == 0:
        raise ValueError(
            f"no SYSU-MM01 {mode}-search query: queries are the IR images (cams {SYSU_IR_CAMS})"
            + (f" of persons also seen by cams {SYSU_INDOOR_RGB_CAMS}" if mode == "indoor" else "")
            + f"; cams holds {np.unique(cams).tolist()}"
        )

    images = _images_by_camera_and_person(labels, cams, image_index, np.flatnonzero(is_gallery_cam))
    if not images:
        raise ValueError(f"no SYSU-MM01 {mode}-search gallery image: cams holds none of {SYSU_GALLERY_CAMS[mode]}")
    if rand_perm is None:
        orders, source = _draw_orders(images, trials, seed), "the seeded gallery draw"
    else:
        orders, source = load_rand_perm_cam(rand_perm), os.fspath(rand_perm)
        if trials > SYSU_TRIALS:
            raise ValueError(f"trials={trials} but {source} holds {SYSU_TRIALS} trials")
    galleries = tuple(_trial_gallery(images, orders, t, shots, source) for t in range(trials))
    return SysuSplit(queries=queries, galleries=galleries)


def _images_by_camera_and_person(labels, cams, image_index, rows):
    """``(cam, pid) -> (image indices [n] ascending, feature rows [n])`` of ``rows``."""
    rows = rows[np.lexsort((image_index[rows], labels[rows], cams[rows]))]  # by cam, pid, index
    keys = np.stack([cams[rows], labels[rows], image_index[rows]], axis=1)  # [n, 3]
    repeated = np.all(keys[1:] == keys[:-1], axis=1)
    if repeated.any():
        cam, pid, index = keys[1:][repeated][0]
        raise ValueError(f"image_index {index} of person {pid} in camera {cam} appears more than once")
    new_group = np.r_[True, np.any(keys[1:, :2] != keys[:-1, :2], axis=1)]
    groups = np.split(np.arange(len(rows)), np.flatnonzero(new_group)[1:])
    return {(int(keys[g[0], 0]), int(keys[g[0], 1])): (keys[g, 2], rows[g]) for g in groups if g.size}


def _draw_orders(images, trials, seed):
    """Seeded stand-in for rand_perm_cam.mat, in its form: (cam, pid) -> [trials, n]."""
    draws = {key: [] for key in images}
    for t in range(trials):
        rng = np.random.default_rng(seed + t)
        for key in sorted(images):
            draws[key].append(rng.permutation(images[key][0]))
    return {key: np.stack(rows) for key, rows in draws.items()}


def _trial_gallery(images, orders, trial, shots, source):
    """[G] ascending feature rows of trial ``trial``'s gallery."""
    rows = []
    for (cam, pid), (indices, feature_rows) in images.items():
        order = orders.get((cam, pid))
        if order is None or order.shape[1] == 0:
            raise ValueError(f"the features hold images of person {pid} in camera {cam}, {source} has none")
        picked = order[trial, :shots]  # [shots] 1-based image indices
        at = np.minimum(np.searchsorted(indices, picked), len(indices) - 1)
        missing = indices[at] != picked
        if missing.any():
            raise ValueError(
                f"{source} puts image {picked[missing][0]} of person {pid} in camera {cam} in the gallery of "
                f"trial {trial + 1}, but no feature row has that (cams, labels, image_index)"
            )
        rows.append(feature_rows[at])
    return np.sort(np.concatenate(rows))


def sysu_trial_scores(features, labels, cams, image_index, *, mode="all", shots=1, rand_perm=None,
                      trials=SYSU_TRIALS, seed=0, rerank=None):
    """Per-query scores of each trial of a SYSU-MM01 setting (arguments: ``sysu_split``;
    ``rerank``: the module docstring).

    Returns:
      list of ``metrics.QueryScores``, one per trial (``metrics.summarize`` one for
      that trial's numbers).
    """
    _check_rerank(rerank)
    features = _check_features(features)
    labels, cams, image_index = _check_int_arrays(len(features), labels=labels, cams=cams, image_index=image_index)
    split = sysu_split(labels, cams, image_index, mode=mode, shots=shots, rand_perm=rand_perm, trials=trials,
                       seed=seed)
    # Cosine similarity: rank against the union of the trial galleries once; each
    # trial takes its columns. Re-ranking: each trial on its own gallery.
    columns = np.unique(np.concatenate(split.galleries))  # [C] feature rows
    query_features = features[split.queries]
    if rerank is None:
        similarity = metrics.cosine_similarity(query_features, features[columns])  # [Q, C]
    query_cams, column_cams = cams[split.queries], cams[columns]
    allowed = np.ones((len(split.queries), len(columns)), dtype=bool)  # [Q, C], False: same room (SYSU_SAME_ROOM)
    for ir_cam, rgb_cam in SYSU_SAME_ROOM.items():
        allowed &= ~((query_cams == ir_cam)[:, None] & (column_cams == rgb_cam)[None, :])
    scores = []
    for gallery in split.galleries:
        cols = np.searchsorted(columns, gallery)  # [G] columns of this trial
        if rerank is None:
            trial_similarity = np.take(similarity, cols, axis=1)  # [Q, G]
        else:
            trial_similarity = -reranking.k_reciprocal_rerank(query_features, features[gallery], **rerank)  # [Q, G]
        scores.append(metrics.score_similarity(
            trial_similarity, labels[split.queries], labels[gallery], np.take(allowed, cols, axis=1),
            identity_level=True))
    return scores


def evaluate_sysu(features, labels, cams, image_index, *, mode="all", shots=1, rand_perm=None,
                  trials=SYSU_TRIALS, seed=0, rerank=None):
    """SYSU-MM01 CMC, mAP, mINP averaged over trials (arguments: ``sysu_split``;
    ``rerank``: the module docstring)."""
    scores = sysu_trial_scores(features, labels, cams, image_index, mode=mode, shots=shots, rand_perm=rand_perm,
                               trials=trials, seed=seed, rerank=rerank)
    return metrics.summarize(metrics.QueryScores.concatenate(scores))


def evaluate_regdb(features, labels, cams, direction="v2t", rerank=None):
    """RegDB CMC, mAP, mINP of one trial in ``direction`` ("v2t" or "t2v");
    ``rerank``: the module docstring."""
    config.check_choice("regdb_direction", direction, REGDB_DIRECTIONS)
    _check_rerank(rerank)
    features = _check_features(features)
    labels, cams = _check_int_arrays(len(features), labels=labels, cams=cams)
    _check_values("cams", cams, (REGDB_VISIBLE_CAM, REGDB_THERMAL_CAM))
    query_cam, gallery_cam = REGDB_DIRECTION_CAMS[direction]
    query, gallery = cams == query_cam, cams == gallery_cam
    for name, cam, mask in (("query", query_cam, query), ("gallery", gallery_cam, gallery)):
        if not mask.any():
            raise ValueError(f"RegDB {direction}: no {name} image (cams == {cam})")
    if rerank is None:
        return metrics.evaluate(features[query], features[gallery], labels[query], labels[gallery])
    distance = reranking.k_reciprocal_rerank(features[query], features[gallery], **rerank)
    return metrics.summarize(metrics.score_similarity(-distance, labels[query], labels[gallery]))


# The RGB cameras of each dataset (the others are IR).
RGB_CAMS = {"regdb": (REGDB_VISIBLE_CAM,), "sysu": SYSU_RGB_CAMS}
# The settings of evaluate_diagnostics, which the training job reports as
# "<dataset>_<setting>" beside the protocol's own.
DIAGNOSTICS = ("intra_rgb", "intra_ir", "ir2rgb_full", "rgb2ir_full")


def _checked_with_rgb_mask(features, labels, cams, dataset):
    """The diagnostics' checked arrays and the mask of the test images from RGB cameras."""
    config.check_choice("dataset", dataset, PROTOCOLS)
    features = _check_features(features)
    labels, cams = _check_int_arrays(len(features), labels=labels, cams=cams)
    return features, labels, cams, np.isin(cams, RGB_CAMS[dataset])


def evaluate_intra_modality(features, labels, cams, dataset):
    """Same-modality retrieval, a diagnostic beside the cross-modality protocol.

    Each test image queries every other test image of its own modality (RGB -> RGB,
    IR -> IR), itself excluded; image-level CMC, mAP, mINP. Not part of either official
    protocol: it shows how far the cross-modality numbers are from what each modality
    alone allows (on the synthetic benchmark, the modality gap must stay the hard part).

    Returns:
      {"intra_rgb": summary, "intra_ir": summary} (``metrics.summarize``).
    """
    features, labels, cams, rgb = _checked_with_rgb_mask(features, labels, cams, dataset)
    out = {}
    for name, mask in (("intra_rgb", rgb), ("intra_ir", ~rgb)):
        if mask.sum() < 2:
            raise ValueError(f"{dataset} intra-modality: fewer than 2 {name[6:]} test images")
        valid = ~np.eye(int(mask.sum()), dtype=bool)  # a query is not its own match
        out[name] = metrics.evaluate(features[mask], features[mask], labels[mask], labels[mask], valid=valid)
    return out


def evaluate_full_galleries(features, labels, cams, dataset):
    """Both cross-modality directions, each query against every test image of the other
    modality: a diagnostic beside SYSU-MM01's protocol, which ranks IR queries only, against
    sampled galleries (RegDB's protocol is this already, ``v2t`` and ``t2v``).

    Image-level CMC, mAP, mINP over full galleries, without SYSU-MM01's same-place rule,
    so the two directions are measured alike.

    Returns:
      {"ir2rgb_full": summary, "rgb2ir_full": summary} (``metrics.summarize``).
    """
    features, labels, cams, rgb = _checked_with_rgb_mask(features, labels, cams, dataset)
    if rgb.all() or not rgb.any():
        raise ValueError(f"{dataset} full galleries: the test set needs images of both modalities")
    return {name: metrics.evaluate(features[query], features[~query], labels[query], labels[~query])
            for name, query in (("ir2rgb_full", ~rgb), ("rgb2ir_full", rgb))}


def evaluate_diagnostics(features, labels, cams, dataset):
    """The diagnostics beside ``dataset``'s protocol: :func:`evaluate_intra_modality`, and
    for SYSU-MM01, whose protocol ranks IR queries only, :func:`evaluate_full_galleries`
    (RegDB's protocol already runs both directions over full galleries)."""
    out = evaluate_intra_modality(features, labels, cams, dataset)
    if dataset == "sysu":
        out.update(evaluate_full_galleries(features, labels, cams, dataset))
    return out


def warn_degenerate(features):
    """Warns when rows of ``features`` [N, D] are all zero: their cosine similarity to
    everything is 0, so their ranks say nothing about the model, yet they are scored
    like the others (a collapsed embedder). Returns how many there are. (Non-finite
    rows are an error, in :func:`_check_features`.)"""
    zero = ~np.asarray(features).any(axis=1)
    if zero.any():
        logging.warning("%d of %d test features are all zero (first: row %d): their ranks are arbitrary, and the "
                        "metrics count them", zero.sum(), len(zero), np.argmax(zero))
    return int(zero.sum())


def evaluate_features(features, labels, cams, image_index=None, protocol="sysu", *, sysu_mode="all", sysu_shots=1,
                      sysu_rand_perm=None, trials=SYSU_TRIALS, regdb_direction="v2t", seed=0, rerank=None):
    """Evaluates test features under ``protocol`` ("sysu" or "regdb").

    The SYSU-MM01 arguments (``image_index``, ``sysu_*``, ``trials``, ``seed``)
    are described in ``sysu_split``; RegDB uses ``regdb_direction`` only;
    ``rerank``: the module docstring.

    Returns:
      ``{"cmc": {"1": r1, "5": r5, "10": r10, "20": r20}, "mAP": m, "mINP": i}``,
      fractions in [0, 1], averaged over the trials.
    """
    config.check_choice("protocol", protocol, PROTOCOLS)
    warn_degenerate(features)
    if protocol == "regdb":
        return evaluate_regdb(features, labels, cams, regdb_direction, rerank=rerank)
    if image_index is None:
        raise ValueError("the SYSU-MM01 protocol needs image_index (the images' positions in camX/PPPP/)")
    return evaluate_sysu(features, labels, cams, image_index, mode=sysu_mode, shots=sysu_shots,
                         rand_perm=sysu_rand_perm, trials=trials, seed=seed, rerank=rerank)


def _check_rerank(rerank):
    """``rerank`` must be None or a dict of valid k_reciprocal_rerank arguments."""
    if rerank is None:
        return
    if not isinstance(rerank, dict) or not set(rerank) <= set(reranking.PARAMETERS):
        raise ValueError(f"rerank must be None or a dict with keys among {list(reranking.PARAMETERS)}; got {rerank!r}")
    try:
        reranking.check_parameters(**rerank)
    except ValueError as e:
        raise ValueError(f"rerank: {e}") from e



def _check_features(features):
    features = np.asarray(features)
    if features.ndim != 2 or features.dtype.kind != "f":
        raise ValueError(f"features must be a float array [N, D]; got {features.dtype} {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    return features


def _check_int_arrays(n, **arrays):
    """The named arrays as int64 [n], one entry per feature row."""
    checked = []
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.shape != (n,) or array.dtype.kind not in "iu":
            raise ValueError(
                f"{name} must be an integer array [{n}] (one per feature row); got {array.dtype} {array.shape}")
        checked.append(array.astype(np.int64))
    return checked


def _check_values(name, array, allowed):
    unexpected = np.setdiff1d(array, allowed)
    if unexpected.size:
        raise ValueError(f"{name} must only hold {list(allowed)}; found {unexpected.tolist()}")


def evaluate_test_set(features, test, dataset, *, sysu_modes=SYSU_MODES, sysu_shots=SYSU_SHOTS,
                      sysu_rand_perm=None, trials=SYSU_TRIALS, regdb_directions=REGDB_DIRECTIONS, seed=0,
                      rerank=None):
    """Every setting of ``dataset``'s protocol on the embedded test set.

    Args:
      features: float [N, D], row i embeds ``test.paths[i]``.
      test: the dataset's test ImageList (raw person ids, cameras, image indices).
      dataset: "sysu" or "regdb".
      rerank: None, or the re-ranking arguments (module docstring).
    Returns:
      {setting: metrics dict}, settings named "regdb_v2t" / "regdb_t2v" or
      "sysu_{all,indoor}_{1,10}shot".
    """
    config.check_choice("dataset", dataset, PROTOCOLS)
    warn_degenerate(features)
    if dataset == "regdb":
        return {f"regdb_{direction}": evaluate_regdb(features, test.pids, test.cams, direction, rerank=rerank)
                for direction in regdb_directions}
    return {f"sysu_{mode}_{shots}shot": evaluate_sysu(features, test.pids, test.cams, test.image_index, mode=mode,
                                                      shots=shots, rand_perm=sysu_rand_perm, trials=trials, seed=seed,
                                                      rerank=rerank)
            for mode in sysu_modes for shots in sysu_shots}
