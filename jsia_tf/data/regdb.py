"""RegDB reader (Nguyen et al., Sensors 2017; paper Sec. 4.1, AGW split files).

Layout::

    root/Visible/<id>/*.bmp, root/Thermal/<id>/*.bmp   10 images per id and modality
    root/idx/{train,test}_{visible,thermal}_{t}.txt     trial t in 1..10

Each idx line is ``relative/path label``. The label column is the person id (a
0-based class index in AGW's files, the folder id in our synthetic data); training
labels are made contiguous by ``CrossModalDataset.train_labels`` either way. Each
trial is its own random 206/206 train/test split of the 412 ids; one model is trained
per trial and results are averaged over the 10 trials (Ye et al., 2018).
"""

import os

import numpy as np

from jsia_tf.config import REGDB_TRIALS
from jsia_tf.data import records


def read_idx(root, idx_file, cam):
    """ImageList of the ``path label`` lines of one idx file, all from camera ``cam``."""
    if not os.path.isfile(idx_file):
        raise records.DatasetError(f"{idx_file}: missing RegDB split file; expected lines 'relative/path label'")
    paths, pids, index = [], [], []
    positions = {}  # folder -> {file name: 1-based position in the sorted folder}
    with open(idx_file) as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise records.DatasetError(
                    f"{idx_file}:{line_number}: {line.rstrip()!r}; "
                    "expected 'relative/path label' with an integer label")
            path = os.path.join(root, fields[0])
            folder, name = os.path.split(path)
            if folder not in positions:
                positions[folder] = {image: i for i, image in enumerate(records.list_images(folder), start=1)}
            if name not in positions[folder] or not os.path.isfile(path):
                raise records.DatasetError(
                    f"{idx_file}:{line_number}: image {path} does not exist; expected a .bmp/.jpg/.png file")
            paths.append(path)
            pids.append(int(fields[1]))
            index.append(positions[folder][name])
    if not paths:
        raise records.DatasetError(f"{idx_file}: no images listed; expected lines 'relative/path label'")
    return records.ImageList.from_lists(paths, pids, [cam] * len(paths), index)


def load_regdb(root, trial):
    """Reads RegDB split ``trial`` (1..10) at ``root`` into a CrossModalDataset."""
    if not isinstance(trial, int) or trial not in REGDB_TRIALS:
        raise records.DatasetError(f"RegDB trial {trial!r} is not one of 1..10 (the AGW idx/*_{{t}}.txt splits)")
    root = os.path.abspath(root)
    for folder in (root, *(os.path.join(root, sub) for sub in ("Visible", "Thermal", "idx"))):
        if not os.path.isdir(folder):
            raise records.DatasetError(
                f"{folder}: missing directory; expected the RegDB root with Visible/, Thermal/, idx/")

    def read(split, modality, cam):
        return read_idx(root, os.path.join(root, "idx", f"{split}_{modality}_{trial}.txt"), cam)

    train_rgb = read("train", "visible", records.REGDB_VISIBLE_CAM)
    train_ir = read("train", "thermal", records.REGDB_THERMAL_CAM)
    # The cross-modal sampler draws K visible and K thermal images of every training id.
    for have, lack, lacking_modality in ((train_rgb, train_ir, "thermal"), (train_ir, train_rgb, "visible")):
        missing = sorted(set(have.pids.tolist()) - set(lack.pids.tolist()))
        if missing:
            raise records.DatasetError(
                f"{os.path.join(root, 'idx', f'train_{lacking_modality}_{trial}.txt')}: training ids {missing} have "
                f"no {lacking_modality} images; expected every training id in both modalities")
    test_rgb = read("test", "visible", records.REGDB_VISIBLE_CAM)
    test_ir = read("test", "thermal", records.REGDB_THERMAL_CAM)
    test = records.ImageList(
        paths=np.concatenate([test_rgb.paths, test_ir.paths]),
        pids=np.concatenate([test_rgb.pids, test_ir.pids]),
        cams=np.concatenate([test_rgb.cams, test_ir.cams]),
        image_index=np.concatenate([test_rgb.image_index, test_ir.image_index]))
    return records.CrossModalDataset(name="regdb", train_rgb=train_rgb, train_ir=train_ir, test=test)
