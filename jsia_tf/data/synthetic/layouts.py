"""The on-disk layouts of RegDB and SYSU-MM01, and the true RGB-IR pairs beside them."""

import concurrent.futures
import functools
import json
import multiprocessing
import os
import shutil
import tempfile
import zipfile

import numpy as np
from PIL import Image

from jsia_tf.config import REGDB_IMAGES_PER_ID, REGDB_TRIALS, SYNTHETIC_LAYOUTS
from jsia_tf.data import records
from jsia_tf.data.synthetic.cameras import REGDB_THERMAL, REGDB_VISIBLE, SYSU_CAMERAS, render_image
from jsia_tf.data.synthetic.persons import (
    BACKGROUND, STREAM_PAIRED, STREAM_PRESENCE, STREAM_SPLIT, image_draw, sample_identity, sample_image_draw,
    stream_rng)
from jsia_tf.data.synthetic.visible import render_maps

LAYOUTS = SYNTHETIC_LAYOUTS

# Version of the rendering: bumped whenever the same arguments write other bytes.
# 2: near-infrared vs thermal IR, IR attributes partly coupled to visible brightness,
#    inner layers, collars, folds.
RENDER_VERSION = 2
METADATA_FILE = "synthetic.json"  # at the dataset root, written with the index
# Ground truth for module G, which only synthetic data can give: true cross-modality
# pairs (one person in one frame seen by an RGB and an IR camera) of the test persons,
# at the dataset root beside the layout. No reader of the layout opens it, so training
# never sees it (``read_paired_test``).
PAIRED_FILE = "paired_test.npz"
PAIRS_PER_ID = 4

# SYSU-MM01 camera presence: ~60% of ids are seen by the indoor RGB cameras 1 and 2
# (56 of 96 test ids), nearly all by cameras 3-6 (reference_facts.md).
_SYSU_INDOOR_SHARE = 0.6
_SYSU_PRESENCE_PROB = {3: 0.95, 4: 0.97, 5: 0.97, 6: 0.97}
_SYSU_IMAGES_PER_CAM = (4, 12)  # inclusive: some ids fill a 10-image multi-shot gallery
_SYSU_VAL_SHARE = _SYSU_TEST_SHARE = 0.2  # train / val / test ids about 60 / 20 / 20
_SYSU_MIN_IDS = 5
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0

_REGDB_MIN_IDS = 2
_JPEG_QUALITY = 90


def _regdb_plan(num_ids, images_per_id):
    """{pid: [(camera, [relative file paths])]} of a RegDB-layout dataset."""
    folders = (("Visible", "v", REGDB_VISIBLE), ("Thermal", "t", REGDB_THERMAL))
    return {pid: [(camera, [f"{folder}/{pid}/{letter}_{pid:05d}_{index:02d}.bmp"
                            for index in range(1, images_per_id + 1)]) for folder, letter, camera in folders]
            for pid in range(1, num_ids + 1)}


def _regdb_trial_split(seed, pids, trial):
    """Train and test ids of RegDB trial ``trial``: a random half each, disjoint."""
    order = stream_rng(seed, STREAM_SPLIT, trial).permutation(pids)
    half = len(pids) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def _write_regdb_index(root, seed, plan):
    pids = np.array(sorted(plan))
    os.makedirs(os.path.join(root, "idx"))
    for trial in REGDB_TRIALS:
        for split, split_pids in zip(("train", "test"), _regdb_trial_split(seed, pids, trial)):
            for modality, camera in (("visible", REGDB_VISIBLE), ("thermal", REGDB_THERMAL)):
                lines = [f"{path} {pid}\n" for pid in split_pids.tolist()
                         for cam, paths in plan[pid] if cam == camera for path in paths]
                with open(os.path.join(root, "idx", f"{split}_{modality}_{trial}.txt"), "w") as out:
                    out.writelines(lines)


def _sysu_indoor(seed, pids):
    """Which ids the indoor RGB cameras 1 and 2 see.

    A golden-ratio (Weyl) sequence with a seeded offset rather than a coin per id:
    any ids 1..N hold ~60% indoor ids, and from N = 5 at least one of each kind,
    so the indoor-search protocol has a gallery even on tiny datasets. Adding ids
    changes no earlier id.
    """
    offset = stream_rng(seed, STREAM_PRESENCE).random()
    return np.mod(offset + pids * _GOLDEN, 1.0) < _SYSU_INDOOR_SHARE


def _sysu_cameras(seed, pid, indoor):
    """{camera: number of images} of one id; at least one RGB and one IR camera."""
    rng = stream_rng(seed, pid, STREAM_PRESENCE)
    cams = list(records.SYSU_INDOOR_RGB_CAMS) if indoor else []
    cams += [cam for cam, prob in sorted(_SYSU_PRESENCE_PROB.items()) if rng.random() < prob]
    # Missing a modality, a person walks past the outdoor cameras, which see nearly everyone.
    if not set(cams) & set(records.SYSU_RGB_CAMS):
        cams.append(5)
    if not set(cams) & set(records.SYSU_IR_CAMS):
        cams.append(6)
    low, high = _SYSU_IMAGES_PER_CAM
    return {cam: int(rng.integers(low, high + 1)) for cam in sorted(cams)}


def _sysu_plan(seed, num_ids):
    """{pid: [(camera, [relative file paths])]} of a SYSU-MM01-layout dataset."""
    pids = np.arange(1, num_ids + 1)
    return {pid: [(SYSU_CAMERAS[cam], [f"cam{cam}/{pid:04d}/{index:04d}.jpg" for index in range(1, count + 1)])
                  for cam, count in _sysu_cameras(seed, pid, indoor).items()]
            for pid, indoor in zip(pids.tolist(), _sysu_indoor(seed, pids))}


def _stratified_order(seed, pids, indoor):
    """``pids`` with each group (indoor, other) shuffled and spread evenly over one
    order, so that any cut of it holds the dataset's share of indoor ids."""
    rng = stream_rng(seed, STREAM_SPLIT)
    position = np.zeros(len(pids))
    for group in (indoor, ~indoor):
        members = rng.permutation(np.flatnonzero(group))
        position[members] = (np.arange(len(members)) + 0.5) / len(members)
    return pids[np.lexsort((~indoor, position))]


def _sysu_split(seed, pids, indoor, test_ids):
    """Train / val / test ids, each with the dataset's share of indoor ids.

    ``test_ids`` = 0: ~60 / 20 / 20, cut from the stratified order, test first (so the
    test set holds indoor ids). ``test_ids`` = T > 0: the test ids are pids 1..T,
    whatever the number of ids, so that datasets with more training ids share one
    test set (a person's images do not depend on the number of ids; ~60% of pids
    1..T are indoor ids, ``_sysu_indoor``); the others are cut ~75 / 25 into train /
    val from their stratified order.
    """
    if test_ids:
        test, rest = pids[pids <= test_ids], pids > test_ids
        order = _stratified_order(seed, pids[rest], indoor[rest])
        n_val = max(1, round(_SYSU_VAL_SHARE / (1.0 - _SYSU_TEST_SHARE) * len(order)))
        return np.sort(order[n_val:]), np.sort(order[:n_val]), test
    order = _stratified_order(seed, pids, indoor)
    n_test = max(1, round(_SYSU_TEST_SHARE * len(pids)))
    n_val = max(1, round(_SYSU_VAL_SHARE * len(pids)))
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return np.sort(train), np.sort(val), np.sort(test)


def _write_sysu_index(root, splits):
    for cam in SYSU_CAMERAS:  # every camera folder exists, as in the real dataset
        os.makedirs(os.path.join(root, f"cam{cam}"), exist_ok=True)
    os.makedirs(os.path.join(root, "exp"))
    for name, split in zip(("train", "val", "test"), splits):
        with open(os.path.join(root, "exp", f"{name}_id.txt"), "w") as out:
            out.write(",".join(str(pid) for pid in split.tolist()) + "\n")


def _write_person(root, seed, height, width, pid, shots):
    """Renders and writes every image of one person; ``shots`` as in a plan."""
    identity = sample_identity(seed, pid)
    for camera, paths in shots:
        os.makedirs(os.path.join(root, os.path.dirname(paths[0])), exist_ok=True)
        for index, path in enumerate(paths, start=1):
            image = render_image(identity, sample_image_draw(seed, pid, camera, index), camera, height, width)
            if path.endswith(".jpg"):
                if image.ndim == 2:  # the real SYSU-MM01 IR jpgs are 3-channel, equal channels
                    image = np.repeat(image[..., None], 3, axis=-1)
                Image.fromarray(image).save(os.path.join(root, path), format="JPEG", quality=_JPEG_QUALITY)
            else:  # RegDB: 24-bit RGB or 8-bit grayscale BMP
                Image.fromarray(image).save(os.path.join(root, path), format="BMP")


def _write_paired(root, seed, height, width, plan, pids):
    """Writes ``PAIRED_FILE``: ``PAIRS_PER_ID`` true pairs of each person of ``pids``.

    A pair is one :class:`ImageDraw` (pose, view, placement, scene seed) of its own
    stream, rendered by one of the person's RGB cameras and one of its IR cameras:
    what module G's translation of either image should give is the other one, on the
    person: the backgrounds are each camera's own scene. Arrays: ``rgb`` uint8
    [N, H, W, 3], ``ir`` uint8 [N, H, W], ``person`` bool [N, H, W] (the person's
    pixels, the same in both images), ``pids``, ``rgb_cams`` and ``ir_cams`` [N]
    (camera numbers: RegDB 1 visible, 2 thermal; SYSU-MM01 1..6).
    """
    cam_ids = {REGDB_VISIBLE: 1, REGDB_THERMAL: 2, **{camera: cam for cam, camera in SYSU_CAMERAS.items()}}
    out = {name: [] for name in ("rgb", "ir", "person", "pids", "rgb_cams", "ir_cams")}
    for pid in pids:
        identity = sample_identity(seed, pid)
        cameras = [camera for camera, _ in plan[pid]]
        for index in range(1, PAIRS_PER_ID + 1):
            rng = stream_rng(seed, pid, STREAM_PAIRED, index)
            draw = image_draw(rng)
            maps = render_maps(identity, draw, height, width)
            for modality, infrared in (("rgb", False), ("ir", True)):
                choices = [camera for camera in cameras if bool(camera.infrared) == infrared]
                camera = choices[rng.integers(len(choices))]
                out[modality].append(render_image(identity, draw, camera, height, width, maps))
                out[f"{modality}_cams"].append(cam_ids[camera])
            out["person"].append(maps[0] != BACKGROUND)
            out["pids"].append(pid)
    # np.savez_compressed's format with a fixed timestamp: the same seed writes the same bytes.
    with zipfile.ZipFile(os.path.join(root, PAIRED_FILE), "w") as archive:
        for name, values in out.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(entry, "w") as f:
                np.lib.format.write_array(f, np.asarray(values), allow_pickle=False)


def read_paired_test(root):
    """The true pairs ``generate`` wrote beside a synthetic dataset (``_write_paired``'s
    arrays, a dict), or None where there are none (a real dataset)."""
    path = os.path.join(root, PAIRED_FILE)
    if not os.path.isfile(path):
        return None
    with np.load(path) as arrays:
        return {name: arrays[name] for name in arrays.files}


def metadata(layout, num_ids, seed, height, width, test_ids=0):
    """What ``generate`` records in ``METADATA_FILE``: a cached dataset is current
    when its file holds exactly this."""
    return {"render_version": RENDER_VERSION, "layout": layout, "num_ids": int(num_ids), "seed": int(seed),
            "height": int(height), "width": int(width), "test_ids": int(test_ids), "pairs_per_id": PAIRS_PER_ID}


def layout_entries(layout):
    """Top-level entries of a layout, the true pairs then the index folder last."""
    if layout == "regdb":
        return ("Visible", "Thermal", PAIRED_FILE, "idx")
    return tuple(f"cam{cam}" for cam in SYSU_CAMERAS) + (PAIRED_FILE, "exp")


def _validate(layout, num_ids, seed, height, width, images_per_id, num_workers, test_ids):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    min_ids = _REGDB_MIN_IDS if layout == "regdb" else _SYSU_MIN_IDS
    why = "a train/test half split" if layout == "regdb" else "a train/val/test split"
    if num_ids < min_ids:
        raise ValueError(f"num_ids must be >= {min_ids} for layout {layout!r} ({why}), got {num_ids}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if test_ids and layout != "sysu":
        raise ValueError(f"test_ids must be 0 for layout {layout!r} (each RegDB trial splits the ids in half), "
                         f"got {test_ids}")
    if not 0 <= test_ids <= num_ids - 2:
        raise ValueError(f"test_ids must be in 0..num_ids - 2 = {num_ids - 2} (a train and a val id left), "
                         f"got {test_ids}")
    for name, value in (("height", height), ("width", width), ("images_per_id", images_per_id),
                        ("num_workers", num_workers)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def generate(out_dir, layout, num_ids, seed, height, width, *, images_per_id=REGDB_IMAGES_PER_ID,
             test_ids=0, overwrite=False, num_workers=1):
    """Writes a synthetic dataset of ``num_ids`` persons (pids 1..N) in ``layout``.

    regdb: ``Visible/<pid>/v_<pid:05d>_<k:02d>.bmp`` (24-bit RGB) and
      ``Thermal/<pid>/t_...bmp`` (8-bit grayscale), ``images_per_id`` each;
      ``idx/{train,test}_{visible,thermal}_{t}.txt`` for trials t = 1..10, lines
      ``Visible/<pid>/<file> <pid>``: the label is the folder's person id, not a
      0-based class index. Each trial is an independent random split: floor(N/2)
      train ids, the rest test, disjoint.
    sysu: ``cam{1..6}/<pid:04d>/<k:04d>.jpg``, cams 1, 2, 4, 5 RGB and 3, 6 IR
      (3-channel, equal channels), 4..12 images per (id, camera), each id in at
      least one RGB and one IR camera; ``exp/{train,val,test}_id.txt`` hold one
      comma-separated line of disjoint ids, ~60/20/20; with ``test_ids`` = T > 0
      the test ids are pids 1..T and the others ~75/25 train/val, so datasets of
      more training ids share one test set. ``images_per_id`` is unused.

    Beside the layout, ``PAIRED_FILE`` holds ``PAIRS_PER_ID`` true RGB-IR pairs of each
    test person (sysu) or of every person (regdb, whose trials split the ids anew;
    the evaluation keeps its trial's test persons): ``read_paired_test``.

    The files do not depend on ``num_workers`` (processes rendering persons in
    parallel). Everything is first written to a sibling temporary folder and moved
    in with the index folder last, so an interrupted run never leaves a dataset
    that a reader accepts. ``METADATA_FILE`` (``synthetic.json``: ``metadata(...)``,
    with ``RENDER_VERSION``) is removed first and moved in after the index, so it
    is present only beside a complete dataset of those arguments.

    Raises:
      ValueError: a bad argument (the message names it).
      FileExistsError: ``out_dir`` already holds this layout and ``overwrite`` is False.
    """
    _validate(layout, num_ids, seed, height, width, images_per_id, num_workers, test_ids)
    out_dir = os.path.abspath(out_dir)
    entries = layout_entries(layout)
    existing = [name for name in entries if os.path.exists(os.path.join(out_dir, name))]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a {layout} dataset ({existing[0]}); "
                              "pass overwrite=True (--overwrite) to replace it")
    plan = _regdb_plan(num_ids, images_per_id) if layout == "regdb" else _sysu_plan(seed, num_ids)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
    try:
        write = functools.partial(_write_person, staging, seed, height, width)
        if num_workers == 1:
            for pid, shots in plan.items():
                write(pid, shots)
        else:
            # "spawn": forking a process that already runs TensorFlow threads can deadlock.
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
                list(pool.map(write, plan.keys(), plan.values(), chunksize=4))
        pids = np.array(sorted(plan))
        if layout == "regdb":
            _write_regdb_index(staging, seed, plan)
            paired_pids = pids  # each trial tests another half: the evaluation keeps its trial's
        else:
            splits = _sysu_split(seed, pids, _sysu_indoor(seed, pids), test_ids)
            _write_sysu_index(staging, splits)
            paired_pids = splits[2]
        _write_paired(staging, seed, height, width, plan, paired_pids.tolist())
        with open(os.path.join(staging, METADATA_FILE), "w") as out:
            json.dump(metadata(layout, num_ids, seed, height, width, test_ids), out, indent=2, sort_keys=True)
            out.write("\n")
        os.makedirs(out_dir, exist_ok=True)
        if os.path.exists(os.path.join(out_dir, METADATA_FILE)):
            os.remove(os.path.join(out_dir, METADATA_FILE))
        for name in reversed(entries):  # index first out, last in
            path = os.path.join(out_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        for name in entries + (METADATA_FILE,):
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(staging)
