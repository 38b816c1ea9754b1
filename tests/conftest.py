"""Shared fixtures: tiny RegDB and SYSU-MM01 folders (32x16 images) for the reader and
pipeline tests, mixed-precision Keras policy scopes, and the one smoke training run that
the CLI tests (train, export, evaluate, analyze) read.

Every image is one flat colour that encodes where it comes from: value v = 16 * pid +
n, n the 1-based image number in its folder. RGB images are (v, 255 - v, 40), IR images
gray v (8-bit BMP for RegDB thermal, gray JPEG for SYSU IR).
"""

import fcntl
import json
import os
import pathlib
import subprocess
import sys

# One intra-op thread per TensorFlow process, this one and every child (the variable is
# inherited): the suite runs as many processes as there are cores (pytest.ini), and small
# networks use a second thread poorly (the learning preset: 168 CPU s on two threads, about
# 115 on one), so more threads would only contend. Set before TensorFlow starts.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import keras
import numpy as np
import pytest
from PIL import Image
import tensorflow as tf

REPO = pathlib.Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 32, 16
PIXEL_STEP = 16  # v = PIXEL_STEP * pid + n

# SYSU-MM01 fixture: id -> cameras holding it. Not every id is in every camera.
SYSU_TRAIN_IDS, SYSU_VAL_IDS, SYSU_TEST_IDS = (1, 2, 3), (4,), (5, 6, 7)
SYSU_CAMS = {1: (1, 3, 4), 2: (2, 5, 6), 3: (1, 2, 3, 6), 4: (4, 6), 5: (1, 3), 6: (2, 4, 6), 7: (5, 6)}
SYSU_IMAGES_PER_FOLDER = 3

# The files whose tests train, longest first (measured with --durations; test_trainer.py's
# in-process steps by the file's CPU time alone): the two xdist workers start them first and
# the many short files fill in behind them, so neither worker is left with a long file last.
LONGEST_FIRST = ("test_worker_failure.py", "test_distribute.py", "test_train.py", "test_learning.py",
                 "test_learning_generation.py", "test_trainer.py",
                 "test_run_folder.py", "test_resume.py", "test_analyze.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def _write_image(path, value, rgb):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if rgb:
        image = Image.new("RGB", (WIDTH, HEIGHT), (value, 255 - value, 40))
    else:
        image = Image.new("L", (WIDTH, HEIGHT), value)
    image.save(path)


def write_regdb(root, num_ids=6, images_per_id=4, trials=(1, 2)):
    """RegDB layout; trial t splits the ids in half with a permutation seeded by t."""
    for pid in range(1, num_ids + 1):
        for n in range(1, images_per_id + 1):
            _write_image(os.path.join(root, "Visible", str(pid), f"v_{n}.bmp"), PIXEL_STEP * pid + n, rgb=True)
            _write_image(os.path.join(root, "Thermal", str(pid), f"t_{n}.bmp"), PIXEL_STEP * pid + n, rgb=False)
    os.makedirs(os.path.join(root, "idx"))
    for trial in trials:
        ids = np.random.default_rng(trial).permutation(np.arange(1, num_ids + 1))
        for split, split_ids in (("train", ids[: num_ids // 2]), ("test", ids[num_ids // 2:])):
            for modality, folder, prefix in (("visible", "Visible", "v"), ("thermal", "Thermal", "t")):
                # Lines in reverse file order: image_index must come from the folder, not the line.
                lines = [f"{folder}/{pid}/{prefix}_{n}.bmp {pid}\n"
                         for pid in sorted(split_ids) for n in range(images_per_id, 0, -1)]
                with open(os.path.join(root, "idx", f"{split}_{modality}_{trial}.txt"), "w") as f:
                    f.writelines(lines)
    return str(root)


def write_sysu(root):
    """SYSU-MM01 layout with SYSU_CAMS, SYSU_IMAGES_PER_FOLDER JPEGs per folder."""
    for cam in range(1, 7):
        os.makedirs(os.path.join(root, f"cam{cam}"))
    for pid, cams in SYSU_CAMS.items():
        for cam in cams:
            for n in range(1, SYSU_IMAGES_PER_FOLDER + 1):
                _write_image(os.path.join(root, f"cam{cam}", f"{pid:04d}", f"{n:04d}.jpg"), PIXEL_STEP * pid + n,
                             rgb=cam not in (3, 6))
    os.makedirs(os.path.join(root, "exp"))
    for split, ids in (("train", SYSU_TRAIN_IDS), ("val", SYSU_VAL_IDS), ("test", SYSU_TEST_IDS)):
        with open(os.path.join(root, "exp", f"{split}_id.txt"), "w") as f:
            f.write(",".join(str(pid) for pid in ids))
    return str(root)


@pytest.fixture(autouse=True, scope="session")
def _no_graph_optimizer():
    """In-process step functions of the tiny test networks run as the smoke preset's do
    (--nograph_optimizer): at these sizes Grappler costs more start-up than it saves."""
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


@pytest.fixture(autouse=True, scope="module")
def _seeded_module():
    """Module fixtures (e.g. a shared Trainer's weights) start from one random state,
    whichever xdist worker runs the file and whatever ran there before."""
    keras.utils.set_random_seed(0)


@pytest.fixture(autouse=True)
def _seeded_test(_seeded_module):
    """So does every test: its result does not depend on the order the workers chose."""
    keras.utils.set_random_seed(0)


@pytest.fixture
def regdb_root(tmp_path):
    return write_regdb(tmp_path / "regdb")


@pytest.fixture
def sysu_root(tmp_path):
    return write_sysu(tmp_path / "sysu")


def _global_policy(name):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.fixture
def mixed_bfloat16():
    yield from _global_policy("mixed_bfloat16")


@pytest.fixture
def mixed_float16():
    yield from _global_policy("mixed_float16")


def run_train(*args):
    """``python -m jsia_tf.train`` on the smoke preset with ``args`` (5 minutes at most)."""
    return subprocess.run(
        [sys.executable, "-m", "jsia_tf.train", f"--flagfile={REPO / 'configs' / 'smoke.flags'}", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300)


def train_preset(preset, tmp_path):
    """``python -m jsia_tf.train`` on ``configs/<preset>.flags`` with its data and run in
    ``tmp_path`` (10 minutes at most); returns the run folder after asserting success."""
    result = subprocess.run(
        [sys.executable, "-m", "jsia_tf.train", f"--flagfile={REPO / 'configs' / f'{preset}.flags'}",
         f"--data_dir={tmp_path / 'data'}", f"--run_dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "run"


def run_script_json(code):
    """The JSON of the last line that the Python ``code`` prints, run in a fresh process
    (one that sets up its own logical devices first; 5 minutes at most)."""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _completed(record):
    return subprocess.CompletedProcess(record["args"], record["returncode"], record["stdout"], record["stderr"])


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke preset in two invocations on one run folder: G pre-training only
    (--joint_epochs=0), then the whole schedule, which resumes from the checkpoint.

    Returns (data_dir, run_dir, first and second CompletedProcess, the first run's
    metrics, whether the second left the dataset files untouched). Trained once for
    all xdist workers: the first to come trains under a file lock, the others read its
    record; tests only read the run.
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # above every worker's own base folder
    root = shared / "smoke_run"
    data_dir, run_dir, record = root / "data", root / "run", root / "record.json"
    with open(shared / "smoke_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            first = run_train(f"--data_dir={data_dir}", f"--run_dir={run_dir}", "--joint_epochs=0")
            assert first.returncode == 0, first.stderr[-3000:]
            first_metrics = json.loads((run_dir / "metrics.json").read_text())
            before = {str(p): p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()}
            second = run_train(f"--data_dir={data_dir}", f"--run_dir={run_dir}", "--eval_every=3")
            assert second.returncode == 0, second.stderr[-3000:]
            after = {str(p): p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()}
            runs = [{"args": r.args, "returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
                    for r in (first, second)]
            record.write_text(json.dumps({"runs": runs, "first_metrics": first_metrics, "unchanged": before == after}))
    saved = json.loads(record.read_text())
    return (data_dir, run_dir, *map(_completed, saved["runs"]), saved["first_metrics"], saved["unchanged"])
