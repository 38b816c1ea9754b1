"""SYSU-MM01 and RegDB protocols: official split sizes, a per-query reference, and input errors."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from jsia_tf.data.records import SYSU_INDOOR_RGB_CAMS, SYSU_IR_CAMS, SYSU_RGB_CAMS, DatasetError, ImageList
from jsia_tf.eval import metrics, protocols, rerank

SYSU_EVAL = Path(__file__).resolve().parents[2] / "shared" / "sysu_eval"
needs_official_files = pytest.mark.skipif(
    not (SYSU_EVAL / "rand_perm_cam.mat").exists(),
    reason=f"official SYSU-MM01 split files not found in {SYSU_EVAL}",
)


def metadata(counts, rng=None):
    """labels, cams, image_index of images numbered 1..n per (cam, pid) of ``counts``, rows shuffled."""
    cams, labels, index = (np.array(x, dtype=np.int64) for x in zip(
        *[(cam, pid, i) for (cam, pid), n in sorted(counts.items()) for i in range(1, n + 1)]))
    rows = (rng or np.random.default_rng(0)).permutation(len(cams))
    return labels[rows], cams[rows], index[rows]


def write_rand_perm(path, counts, num_pids, rng):
    """A rand_perm_cam.mat in the official layout for the images of ``counts``."""
    table = np.empty((len(protocols.SYSU_CAMS), 1), dtype=object)
    for c, cam in enumerate(protocols.SYSU_CAMS):
        persons = np.empty((num_pids, 1), dtype=object)
        for pid in range(1, num_pids + 1):
            n = counts.get((cam, pid), 0)
            persons[pid - 1, 0] = np.stack([rng.permutation(n) + 1 for _ in range(10)]).astype(np.uint8)
        table[c, 0] = persons
    scipy.io.savemat(path, {"rand_perm_cam": table})


# Eight persons. Person 1 is seen in RGB by camera 2 only: its camera-3 queries have no
# valid match (same-place rule). Persons 7, 8 are never seen by cameras 1, 2 (not indoor).
SMALL_COUNTS = {
    (1, 2): 3, (1, 3): 12, (1, 4): 2, (1, 5): 5, (1, 6): 4,
    (2, 1): 4, (2, 2): 2, (2, 3): 3, (2, 5): 11,
    (4, 2): 3, (4, 4): 4, (4, 6): 2, (4, 7): 3, (4, 8): 5,
    (5, 3): 2, (5, 5): 1, (5, 7): 2, (5, 8): 3,
    (3, 1): 3, (3, 2): 2, (3, 4): 3, (3, 6): 2, (3, 7): 2,
    (6, 1): 2, (6, 3): 3, (6, 5): 2, (6, 6): 1, (6, 8): 3,
}


def reference_sysu(features, labels, cams, image_index, rand_perm_path, mode, shots):
    """The official evaluation, one query at a time: [trials] of (ranks, aps, inps) of scored queries."""
    orders = scipy.io.loadmat(rand_perm_path)["rand_perm_cam"]
    gallery_cams = SYSU_RGB_CAMS if mode == "all" else SYSU_INDOOR_RGB_CAMS
    indoor_pids = {labels[i] for i in range(len(labels)) if cams[i] in SYSU_INDOOR_RGB_CAMS}
    queries = [i for i in range(len(labels)) if cams[i] in SYSU_IR_CAMS
               and (mode == "all" or labels[i] in indoor_pids)]
    unit = features.astype(np.float64) / np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    row_of = {(cams[i], labels[i], image_index[i]): i for i in range(len(labels))}
    results = []
    for trial in range(10):
        gallery = []
        for cam in gallery_cams:
            for pid in sorted(set(labels)):
                for index in orders[cam - 1, 0][pid - 1, 0][trial, :shots]:
                    gallery.append(row_of[(cam, pid, index)])
        ranks, aps, inps = [], [], []
        for q in queries:
            kept = [g for g in sorted(gallery) if not (cams[q] == 3 and cams[g] == 2)]
            ranked = sorted(kept, key=lambda g: (-float(unit[q] @ unit[g]), g))
            correct = [labels[g] == labels[q] for g in ranked]
            if not any(correct):
                continue
            first = correct.index(True)
            ranks.append(1 + len({labels[g] for g in ranked[:first]}))
            positions = [k + 1 for k, c in enumerate(correct) if c]
            aps.append(np.mean([(i + 1) / p for i, p in enumerate(positions)]))
            inps.append(len(positions) / positions[-1])
        results.append((np.array(ranks), np.array(aps), np.array(inps)))
    return results


@pytest.mark.parametrize("mode", ["all", "indoor"])
@pytest.mark.parametrize("shots", [1, 10])
def test_sysu_matches_the_official_algorithm(tmp_path, mode, shots):
    rng = np.random.default_rng(11)
    rand_perm = tmp_path / "rand_perm_cam.mat"
    write_rand_perm(rand_perm, SMALL_COUNTS, num_pids=8, rng=rng)
    labels, cams, image_index = metadata(SMALL_COUNTS, rng)
    features = rng.normal(size=(len(labels), 6)).astype(np.float32)

    trials = protocols.sysu_trial_scores(
        features, labels, cams, image_index, mode=mode, shots=shots, rand_perm=rand_perm)
    reference = reference_sysu(features, labels, cams, image_index, rand_perm, mode, shots)
    for scores, (ranks, aps, inps) in zip(trials, reference, strict=True):
        np.testing.assert_array_equal(scores.rank[scores.has_positive], ranks)
        np.testing.assert_allclose(scores.ap[scores.has_positive], aps, rtol=0, atol=1e-10)
        np.testing.assert_allclose(scores.inp[scores.has_positive], inps, rtol=0, atol=1e-10)

    summary = protocols.evaluate_sysu(
        features, labels, cams, image_index, mode=mode, shots=shots, rand_perm=rand_perm)
    all_ranks = np.concatenate([r for r, _, _ in reference])
    for k in metrics.CMC_RANKS:
        assert summary["cmc"][str(k)] == pytest.approx(np.mean(all_ranks <= k), abs=1e-10)
    assert summary["mAP"] == pytest.approx(np.mean([a.mean() for _, a, _ in reference]), abs=1e-10)
    assert summary["mINP"] == pytest.approx(np.mean([i.mean() for _, _, i in reference]), abs=1e-10)


def test_sysu_queries_and_galleries():
    labels, cams, image_index = metadata(SMALL_COUNTS)
    split = protocols.sysu_split(labels, cams, image_index, mode="all", shots=10, trials=3)
    # Queries: every IR image; persons 7, 8 drop out of indoor search, both IR cameras stay.
    assert set(cams[split.queries]) == set(SYSU_IR_CAMS)
    assert len(split.queries) == np.isin(cams, SYSU_IR_CAMS).sum()
    indoor = protocols.sysu_split(labels, cams, image_index, mode="indoor", trials=1)
    assert set(labels[indoor.queries]) == {1, 2, 3, 4, 5, 6} and set(cams[indoor.queries]) == set(SYSU_IR_CAMS)
    assert set(cams[indoor.galleries[0]]) == set(SYSU_INDOOR_RGB_CAMS)
    # Multi-shot: min(10, n) images of every (camera, person) of the RGB cameras.
    for gallery in split.galleries:
        keys, picked = np.unique(np.stack([cams[gallery], labels[gallery]], axis=1), axis=0, return_counts=True)
        rgb = {key: n for key, n in SMALL_COUNTS.items() if key[0] in SYSU_RGB_CAMS}
        assert {tuple(k): c for k, c in zip(keys.tolist(), picked)} == {k: min(10, n) for k, n in rgb.items()}
    single = protocols.sysu_split(labels, cams, image_index, shots=1, trials=10)
    assert {len(g) for g in single.galleries} == {len([k for k in SMALL_COUNTS if k[0] in SYSU_RGB_CAMS])}


def test_sysu_seeded_draw_is_reproducible():
    labels, cams, image_index = metadata(SMALL_COUNTS)
    draw = lambda seed: protocols.sysu_split(labels, cams, image_index, shots=1, trials=10, seed=seed).galleries
    assert all(np.array_equal(a, b) for a, b in zip(draw(0), draw(0)))
    assert not all(np.array_equal(a, b) for a, b in zip(draw(0), draw(1)))
    assert len({tuple(g) for g in draw(0)}) > 1  # trials differ


def test_same_place_rule():
    # Person 1: RGB only in camera 2, IR in cameras 3 and 6. Person 2: cameras 1 and 3.
    counts = {(2, 1): 1, (3, 1): 1, (6, 1): 1, (1, 2): 1, (3, 2): 1}
    labels, cams, image_index = metadata(counts)
    features = np.eye(2)[labels - 1] + 0.1  # each person has its own direction
    (scores,) = protocols.sysu_trial_scores(features, labels, cams, image_index, trials=1)
    split = protocols.sysu_split(labels, cams, image_index, trials=1)
    query_keys = list(zip(cams[split.queries].tolist(), labels[split.queries].tolist()))
    by_key = dict(zip(query_keys, scores.rank.tolist()))
    # The camera-3 query of person 1 never sees its camera-2 match: no valid positive.
    assert by_key == {(3, 1): 0, (6, 1): 1, (3, 2): 1}


@needs_official_files
def test_load_rand_perm_cam_on_the_official_file():
    orders = protocols.load_rand_perm_cam(SYSU_EVAL / "rand_perm_cam.mat")
    num_pids = {cam: sum(1 for c, _ in orders if c == cam) for cam in protocols.SYSU_CAMS}
    assert num_pids == {1: 333, 2: 333, 3: 533, 4: 533, 5: 533, 6: 333}
    for order in orders.values():
        n = order.shape[1]
        assert order.shape == (10, n) and order.dtype == np.int64
        np.testing.assert_array_equal(np.sort(order, axis=1), np.broadcast_to(np.arange(1, n + 1), order.shape))
    test_ids = scipy.io.loadmat(SYSU_EVAL / "test_id.mat")["id"].ravel()
    seen = {cam: sum(orders[(cam, pid)].size > 0 for pid in test_ids) for cam in protocols.SYSU_CAMS}
    assert seen == {1: 56, 2: 56, 3: 93, 4: 94, 5: 95, 6: 96}
    # test_id_indoor.mat is exactly the test persons seen by the indoor RGB cameras.
    indoor_ids = scipy.io.loadmat(SYSU_EVAL / "test_id_indoor.mat")["id"].ravel()
    seen_indoor = {pid for pid in test_ids if any(orders[(cam, pid)].size for cam in SYSU_INDOOR_RGB_CAMS)}
    assert seen_indoor == set(indoor_ids.tolist())


@needs_official_files
def test_official_split_sizes():
    orders = protocols.load_rand_perm_cam(SYSU_EVAL / "rand_perm_cam.mat")
    test_ids = scipy.io.loadmat(SYSU_EVAL / "test_id.mat")["id"].ravel()
    counts = {(cam, pid): orders[(cam, pid)].shape[1] for cam in protocols.SYSU_CAMS for pid in test_ids}
    labels, cams, image_index = metadata({k: n for k, n in counts.items() if n})
    path = SYSU_EVAL / "rand_perm_cam.mat"
    expected = {("all", 1): (3803, 301), ("all", 10): (3803, 3010), ("indoor", 1): (2208, 112),
                ("indoor", 10): (2208, 1120)}
    for (mode, shots), (num_queries, gallery_size) in expected.items():
        split = protocols.sysu_split(labels, cams, image_index, mode=mode, shots=shots, rand_perm=path)
        assert len(split.queries) == num_queries
        assert [len(g) for g in split.galleries] == [gallery_size] * 10
    split = protocols.sysu_split(labels, cams, image_index, mode="all", rand_perm=path, trials=1)
    assert np.bincount(cams[split.queries], minlength=7)[list(SYSU_IR_CAMS)].tolist() == [1883, 1920]
    # Every query has a correct match in every setting: none is skipped (the official code relies on it).
    features = np.random.default_rng(0).normal(size=(len(labels), 4))
    for mode in protocols.SYSU_MODES:
        (scores,) = protocols.sysu_trial_scores(
            features, labels, cams, image_index, mode=mode, rand_perm=path, trials=1)
        assert scores.has_positive.all()


def test_sysu_rand_perm_errors(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "rand_perm_cam.mat"
    write_rand_perm(path, SMALL_COUNTS, num_pids=8, rng=rng)
    labels, cams, image_index = metadata(SMALL_COUNTS)
    # An image the file puts in a gallery is missing from the features.
    keep = ~((cams == 1) & (labels == 3) & (image_index == 7))
    with pytest.raises(ValueError, match=rf"{path}.* of person 3 in camera 1 .*no feature row"):
        protocols.sysu_split(labels[keep], cams[keep], image_index[keep], shots=10, rand_perm=path)
    # Features of a (camera, person) the file does not know.
    with pytest.raises(ValueError, match=f"person 9 in camera 4, {path} has none"):
        protocols.sysu_split(np.r_[labels, 9], np.r_[cams, 4], np.r_[image_index, 1], rand_perm=path)
    with pytest.raises(ValueError, match="trials=11 but .* holds 10 trials"):
        protocols.sysu_split(labels, cams, image_index, rand_perm=path, trials=11)
    with pytest.raises(DatasetError, match="cannot read .*missing.mat"):
        protocols.load_rand_perm_cam(tmp_path / "missing.mat")
    scipy.io.savemat(tmp_path / "other.mat", {"something": np.zeros(3)})
    with pytest.raises(DatasetError, match="expected key 'rand_perm_cam'"):
        protocols.load_rand_perm_cam(tmp_path / "other.mat")


def test_sysu_input_errors():
    labels, cams, image_index = metadata(SMALL_COUNTS)
    features = np.ones((len(labels), 4))
    evaluate = lambda **kw: protocols.evaluate_sysu(
        **{"features": features, "labels": labels, "cams": cams, "image_index": image_index, **kw})
    with pytest.raises(ValueError, match="features must be a float array"):
        evaluate(features=features[:, 0])
    with pytest.raises(ValueError, match="features contain NaN"):
        evaluate(features=np.full_like(features, np.nan))
    with pytest.raises(ValueError, match=rf"labels must be an integer array \[{len(labels)}\]"):
        evaluate(labels=labels.astype(float))
    with pytest.raises(ValueError, match=r"image_index must be an integer array"):
        evaluate(image_index=image_index[:-1])
    with pytest.raises(ValueError, match=r"cams must only hold \[1, 2, 3, 4, 5, 6\]; found \[7\]"):
        evaluate(cams=np.where(cams == 6, 7, cams))
    with pytest.raises(ValueError, match="image_index 1 of person 2 in camera 1 appears more than once"):
        evaluate(image_index=np.where((cams == 1) & (labels == 2), 1, image_index))
    with pytest.raises(ValueError, match="no SYSU-MM01 all-search query"):
        evaluate(cams=np.where(np.isin(cams, SYSU_IR_CAMS), 1, cams))
    with pytest.raises(ValueError, match="sysu_mode must be one of"):
        evaluate(mode="outdoor")
    with pytest.raises(ValueError, match=r"sysu_shots must be one of \[1, 10\]"):
        evaluate(shots=5)
    with pytest.raises(ValueError, match="needs image_index"):
        protocols.evaluate_features(features, labels, cams, protocol="sysu")
    with pytest.raises(ValueError, match="protocol must be one of"):
        protocols.evaluate_features(features, labels, cams, image_index, protocol="market")


# RegDB, hand-computed. Visible: person 1 (1, 0), person 2 (0, 1); thermal: person 1 (1, 0.5),
# person 2 (1, 0.1). Cosines visible x thermal: [[0.894, 0.995], [0.447, 0.0995]].
#   v2t: both queries find the wrong person first: ranks 2, 2; AP = INP = 0.5 each.
#   t2v: thermal 1 finds visible 1 first (AP 1); thermal 2 finds visible 1 first (rank 2, AP 0.5).
REGDB_FEATURES = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.5], [1.0, 0.1]])
REGDB_LABELS = np.array([1, 2, 1, 2])
REGDB_CAMS = np.array([1, 1, 2, 2])


def test_regdb_hand_computed():
    v2t = protocols.evaluate_regdb(REGDB_FEATURES, REGDB_LABELS, REGDB_CAMS, "v2t")
    assert v2t == {"cmc": {"1": 0.0, "5": 1.0, "10": 1.0, "20": 1.0}, "mAP": 0.5, "mINP": 0.5}
    t2v = protocols.evaluate_features(REGDB_FEATURES, REGDB_LABELS, REGDB_CAMS, protocol="regdb",
                                      regdb_direction="t2v")
    assert t2v == {"cmc": {"1": 0.5, "5": 1.0, "10": 1.0, "20": 1.0}, "mAP": 0.75, "mINP": 0.75}


def test_regdb_is_image_level_on_every_image():
    rng = np.random.default_rng(2)
    labels = np.tile(np.repeat(np.arange(5), 4), 2)
    cams = np.repeat([1, 2], 20)
    features = rng.normal(size=(40, 8))
    for direction, (query, gallery) in {"v2t": (cams == 1, cams == 2), "t2v": (cams == 2, cams == 1)}.items():
        expected = metrics.evaluate(features[query], features[gallery], labels[query], labels[gallery])
        assert protocols.evaluate_regdb(features, labels, cams, direction) == expected


def test_regdb_input_errors():
    with pytest.raises(ValueError, match=r"cams must only hold \[1, 2\]; found \[3\]"):
        protocols.evaluate_regdb(REGDB_FEATURES, REGDB_LABELS, np.array([1, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"RegDB v2t: no gallery image \(cams == 2\)"):
        protocols.evaluate_regdb(REGDB_FEATURES, REGDB_LABELS, np.ones(4, dtype=int))
    with pytest.raises(ValueError, match="regdb_direction must be one of"):
        protocols.evaluate_regdb(REGDB_FEATURES, REGDB_LABELS, REGDB_CAMS, "up")


# Re-ranking: each protocol ranks by -distance of k_reciprocal_rerank instead of the cosine.
RERANK = {"k1": 4, "k2": 2, "lambda_value": 0.3}


def test_sysu_rerank_is_per_trial_then_masked(tmp_path):
    rng = np.random.default_rng(12)
    labels, cams, image_index = metadata(SMALL_COUNTS, rng)
    features = rng.normal(size=(len(labels), 6))
    split = protocols.sysu_split(labels, cams, image_index, mode="all", shots=10, trials=3, seed=2)
    trials = protocols.sysu_trial_scores(features, labels, cams, image_index, mode="all", shots=10, trials=3, seed=2,
                                         rerank=RERANK)
    query_labels = labels[split.queries]
    for scores, gallery in zip(trials, split.galleries, strict=True):
        # Re-ranked on the whole trial gallery (camera 2 included), then camera-3 queries lose camera 2.
        distance = rerank.k_reciprocal_rerank(features[split.queries], features[gallery], **RERANK)
        valid = ~((cams[split.queries] == 3)[:, None] & (cams[gallery] == 2)[None, :])
        expected = metrics.score_similarity(-distance, query_labels, labels[gallery], valid, identity_level=True)
        for field in ("rank", "ap", "inp"):
            np.testing.assert_array_equal(getattr(scores, field), getattr(expected, field))
    summary = protocols.evaluate_features(features, labels, cams, image_index, protocol="sysu", sysu_shots=10,
                                          trials=3, seed=2, rerank=RERANK)
    assert summary == metrics.summarize(metrics.QueryScores.concatenate(trials))
    assert summary != protocols.evaluate_features(features, labels, cams, image_index, protocol="sysu",
                                                  sysu_shots=10, trials=3, seed=2)


def test_rerank_with_lambda_one_keeps_the_cosine_ranking():
    # The original distance is 2 - 2 cos scaled per query: the same order as the cosine.
    rng = np.random.default_rng(13)
    labels, cams, image_index = metadata(SMALL_COUNTS, rng)
    features = rng.normal(size=(len(labels), 6))
    for mode in protocols.SYSU_MODES:
        plain = protocols.evaluate_sysu(features, labels, cams, image_index, mode=mode, trials=2)
        assert protocols.evaluate_sysu(features, labels, cams, image_index, mode=mode, trials=2,
                                       rerank={"lambda_value": 1.0}) == plain
    regdb_labels, regdb_cams = np.tile(np.repeat(np.arange(5), 4), 2), np.repeat([1, 2], 20)
    regdb_features = rng.normal(size=(40, 8))
    for direction in protocols.REGDB_DIRECTIONS:
        plain = protocols.evaluate_regdb(regdb_features, regdb_labels, regdb_cams, direction)
        assert protocols.evaluate_regdb(regdb_features, regdb_labels, regdb_cams, direction,
                                        rerank={"lambda_value": 1.0}) == plain


def test_regdb_rerank():
    rng = np.random.default_rng(14)
    labels, cams = np.tile(np.repeat(np.arange(5), 4), 2), np.repeat([1, 2], 20)
    features = rng.normal(size=(40, 8))
    query, gallery = cams == 2, cams == 1
    distance = rerank.k_reciprocal_rerank(features[query], features[gallery], **RERANK)
    expected = metrics.summarize(metrics.score_similarity(-distance, labels[query], labels[gallery]))
    assert protocols.evaluate_features(features, labels, cams, protocol="regdb", regdb_direction="t2v",
                                       rerank=RERANK) == expected
    test = ImageList.from_lists([f"{i}.bmp" for i in range(40)], labels, cams, np.ones(40))
    assert protocols.evaluate_test_set(features, test, "regdb", rerank=RERANK) == {
        f"regdb_{d}": protocols.evaluate_regdb(features, labels, cams, d, rerank=RERANK)
        for d in protocols.REGDB_DIRECTIONS}
    assert protocols.evaluate_test_set(features, test, "regdb", rerank=RERANK)["regdb_t2v"] == expected


def test_sysu_test_set_rerank():
    rng = np.random.default_rng(15)
    labels, cams, image_index = metadata(SMALL_COUNTS, rng)
    features = rng.normal(size=(len(labels), 6))
    test = ImageList.from_lists([f"{i}.jpg" for i in range(len(labels))], labels, cams, image_index)
    assert protocols.evaluate_test_set(features, test, "sysu", trials=2, rerank=RERANK) == {
        f"sysu_{mode}_{shots}shot": protocols.evaluate_sysu(features, labels, cams, image_index, mode=mode,
                                                            shots=shots, trials=2, rerank=RERANK)
        for mode in protocols.SYSU_MODES for shots in protocols.SYSU_SHOTS}


def test_rerank_errors_name_the_argument():
    evaluate = lambda rerank_arguments: protocols.evaluate_regdb(  # noqa: E731
        REGDB_FEATURES, REGDB_LABELS, REGDB_CAMS, rerank=rerank_arguments)
    with pytest.raises(ValueError, match=r"rerank must be None or a dict with keys among \['k1', 'k2', "):
        evaluate({"k3": 2})
    with pytest.raises(ValueError, match="rerank must be None or a dict"):
        evaluate(0.3)
    with pytest.raises(ValueError, match="rerank: k1 must be a positive integer; got 0"):
        evaluate({"k1": 0})
    with pytest.raises(ValueError, match=r"rerank: lambda_value must be a number in \[0, 1\]"):
        protocols.evaluate_sysu(np.ones((2, 2)), [1, 1], [1, 3], [1, 1], rerank={"lambda_value": -0.1})


def test_full_gallery_diagnostic_ranks_each_direction_against_the_whole_other_modality():
    """RGB (cams 1, 2) images of ids 0, 1; IR (cam 3) images of ids 0, 1, the id-1 one closer
    to the id-0 RGB image: IR -> RGB ranks it second (AP 1/2); RGB -> IR finds both first."""
    features = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.8, 0.6]])
    labels, cams = np.array([0, 1, 0, 1]), np.array([1, 2, 3, 3])
    out = protocols.evaluate_full_galleries(features, labels, cams, "sysu")
    assert out["ir2rgb_full"]["cmc"]["1"] == pytest.approx(0.5)
    assert out["ir2rgb_full"]["mAP"] == pytest.approx((1 + 1 / 2) / 2)
    assert out["rgb2ir_full"]["cmc"]["1"] == 1.0 and out["rgb2ir_full"]["mAP"] == 1.0
    with pytest.raises(ValueError, match="needs images of both modalities"):
        protocols.evaluate_full_galleries(features[:2], labels[:2], cams[:2], "sysu")


def test_intra_modality_diagnostic_excludes_the_query_itself():
    """RGB: 4 images of 2 ids, the last one closer to id 0 (AP 1/3); IR: 2 images of one id."""
    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.2], [1.0, 1.0], [1.0, 0.9]])
    labels = np.array([0, 0, 1, 1, 0, 0])
    cams = np.array([1, 1, 1, 1, 2, 2])
    out = protocols.evaluate_intra_modality(features, labels, cams, "regdb")
    assert out["intra_rgb"]["cmc"]["1"] == pytest.approx(0.75)
    assert out["intra_rgb"]["mAP"] == pytest.approx((1 + 1 + 1 + 1 / 3) / 4)
    assert out["intra_ir"]["cmc"]["1"] == 1.0 and out["intra_ir"]["mAP"] == 1.0
    with pytest.raises(ValueError, match="fewer than 2 ir test images"):
        protocols.evaluate_intra_modality(features[:5], labels[:5], cams[:5], "regdb")


def test_all_zero_features_are_scored_with_a_warning(caplog):
    features = REGDB_FEATURES.copy()
    features[[1, 3]] = 0.0
    with caplog.at_level("WARNING", logger="absl"):
        metrics = protocols.evaluate_features(features, REGDB_LABELS, REGDB_CAMS, protocol="regdb")
    assert set(metrics) == {"cmc", "mAP", "mINP"}
    assert f"2 of {len(features)} test features are all zero (first: row 1)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="absl"):
        assert protocols.warn_degenerate(REGDB_FEATURES) == 0
    assert caplog.text == ""
    features[1, 0] = np.nan
    with pytest.raises(ValueError, match="features contain NaN or infinite values"):
        protocols.evaluate_features(features, REGDB_LABELS, REGDB_CAMS, protocol="regdb")
