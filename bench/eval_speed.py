"""Seconds taken by the full SYSU-MM01 protocol (4 settings x 10 trials) and one RegDB trial.

  python bench/eval_speed.py [--sysu_eval_dir=../shared/sysu_eval] [--dim=2048]

Real sizes: 3,803 IR queries of 96 persons (camera 3: 1,883 images of 93 persons;
camera 6: 1,920 of 96). With the official split files, the image count of every
(camera, person) is the one ``rand_perm_cam.mat`` permutes and the galleries are
the official ones; without them, 20 images per (camera, person), persons spread
over cameras as in SYSU-MM01 (3,780 queries), and seeded galleries. RegDB:
2,060 x 2,060.
Features: a per-person direction plus a per-modality shift plus noise, so
rankings look like a trained model's rather than a random one's.
"""

import time
from pathlib import Path

import numpy as np
import scipy.io
from absl import app, flags

from jsia_tf.data.records import REGDB_THERMAL_CAM, REGDB_VISIBLE_CAM, SYSU_INDOOR_RGB_CAMS, SYSU_IR_CAMS
from jsia_tf.eval import protocols

_SYSU_EVAL_DIR = flags.DEFINE_string(
    "sysu_eval_dir", str(Path(__file__).resolve().parents[2] / "shared" / "sysu_eval"),
    "Folder with the official rand_perm_cam.mat and test_id.mat; synthetic counts when absent.")
_DIM = flags.DEFINE_integer("dim", 2048, "Feature size.")

# SYSU-MM01 test persons seen by each camera (reference_facts.md), for the synthetic fallback.
_PERSONS_PER_CAM = {1: 56, 2: 56, 3: 93, 4: 94, 5: 95, 6: 96}
_TEST_PERSONS = 96
_IMAGES_PER_CAM = 20
_REGDB_PERSONS, _REGDB_IMAGES = 206, 10  # one RegDB test trial: 206 persons x 10 images per modality


def sysu_counts(sysu_eval_dir):
    """(cam, pid) -> number of images, and the rand_perm_cam.mat path (None: synthetic)."""
    rand_perm = Path(sysu_eval_dir) / "rand_perm_cam.mat"
    if rand_perm.exists():
        orders = protocols.load_rand_perm_cam(rand_perm)
        test_ids = scipy.io.loadmat(Path(sysu_eval_dir) / "test_id.mat")["id"].ravel()
        counts = {(cam, int(pid)): orders[(cam, pid)].shape[1] for cam in protocols.SYSU_CAMS for pid in test_ids}
        return {key: n for key, n in counts.items() if n}, rand_perm
    # The indoor RGB cameras see the first persons, the other cameras the last ones.
    return {(cam, pid): _IMAGES_PER_CAM for cam, seen in _PERSONS_PER_CAM.items()
            for pid in range(1, _TEST_PERSONS + 1)
            if (pid <= seen if cam in SYSU_INDOOR_RGB_CAMS else pid > _TEST_PERSONS - seen)}, None


def synthetic_features(labels, is_ir, dim, rng):
    """[N, dim] float32: person direction + modality shift + noise."""
    person = rng.normal(size=(labels.max() + 1, dim))
    modality = rng.normal(size=(2, dim))
    return (person[labels] + 0.5 * modality[is_ir.astype(int)] + 4.5 * rng.normal(size=(len(labels), dim))).astype(
        np.float32)


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    counts, rand_perm = sysu_counts(_SYSU_EVAL_DIR.value)
    rows = [(cam, pid, i) for (cam, pid), n in sorted(counts.items()) for i in range(1, n + 1)]
    cams, labels, image_index = (np.array(x, dtype=np.int64) for x in zip(*rows))
    features = synthetic_features(labels, np.isin(cams, SYSU_IR_CAMS), _DIM.value, rng)
    print(f"SYSU-MM01: {len(labels)} test images, {np.isin(cams, SYSU_IR_CAMS).sum()} IR, dim {_DIM.value}, "
          f"galleries from {rand_perm or 'a seeded draw (synthetic counts)'}")

    total = 0.0
    for mode in protocols.SYSU_MODES:
        for shots in protocols.SYSU_SHOTS:
            start = time.perf_counter()
            result = protocols.evaluate_sysu(features, labels, cams, image_index, mode=mode, shots=shots,
                                             rand_perm=rand_perm, trials=protocols.SYSU_TRIALS)
            seconds = time.perf_counter() - start
            total += seconds
            print(f"  {mode:>6}-search {shots:>2}-shot, {protocols.SYSU_TRIALS} trials: {seconds:6.2f} s "
                  f"(R1 {100 * result['cmc']['1']:.1f}%, mAP {100 * result['mAP']:.1f}%)")
    print(f"  SYSU-MM01 total: {total:.2f} s")

    regdb_labels = np.tile(np.repeat(np.arange(_REGDB_PERSONS), _REGDB_IMAGES), 2)
    regdb_cams = np.repeat([REGDB_VISIBLE_CAM, REGDB_THERMAL_CAM], _REGDB_PERSONS * _REGDB_IMAGES)
    regdb_features = synthetic_features(regdb_labels, regdb_cams == REGDB_THERMAL_CAM, _DIM.value, rng)
    start = time.perf_counter()
    result = protocols.evaluate_regdb(regdb_features, regdb_labels, regdb_cams, "v2t")
    print(f"RegDB v2t, {len(regdb_labels) // 2} x {len(regdb_labels) // 2}: {time.perf_counter() - start:.2f} s "
          f"(R1 {100 * result['cmc']['1']:.1f}%, mAP {100 * result['mAP']:.1f}%)")


if __name__ == "__main__":
    app.run(main)
