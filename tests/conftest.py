"""Shared fixtures: tiny RegDB and SYSU-MM01 folders (32x16 images) for the reader and
pipeline tests, and a mixed_bfloat16 Keras policy scope.

Every image is one flat colour that encodes where it comes from: value v = 16 * pid +
n, n the 1-based image number in its folder. RGB images are (v, 255 - v, 40), IR images
gray v (8-bit BMP for RegDB thermal, gray JPEG for SYSU IR).
"""

import os

import keras
import numpy as np
import pytest
from PIL import Image

HEIGHT, WIDTH = 32, 16
PIXEL_STEP = 16  # v = PIXEL_STEP * pid + n

# SYSU-MM01 fixture: id -> cameras holding it. Not every id is in every camera.
SYSU_TRAIN_IDS, SYSU_VAL_IDS, SYSU_TEST_IDS = (1, 2, 3), (4,), (5, 6, 7)
SYSU_CAMS = {1: (1, 3, 4), 2: (2, 5, 6), 3: (1, 2, 3, 6), 4: (4, 6), 5: (1, 3), 6: (2, 4, 6), 7: (5, 6)}
SYSU_IMAGES_PER_FOLDER = 3


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
