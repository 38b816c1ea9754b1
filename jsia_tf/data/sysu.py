"""SYSU-MM01 reader (Wu et al., ICCV 2017; paper Sec. 4.1).

Layout::

    root/cam1 .. cam6/<pid:04d>/<nnnn>.jpg   cams 1, 2, 4, 5 RGB; 3, 6 IR
    root/exp/train_id.txt, val_id.txt, test_id.txt   comma-separated person ids

Training uses the train and val ids together (395 ids on the real dataset), as the
official JSIA-ReID and AGW code do. The test set is every image of the test ids in
every camera; the evaluation protocol picks queries and galleries from it by camera
and ``image_index``. Not every id appears in every camera.
"""

import os
import re

from jsia_tf.data import records

NUM_CAMS = 6  # cam1 .. cam6
def read_ids(path):
    """Person ids in an ``exp/*_id.txt`` file: integers separated by commas/whitespace."""
    if not os.path.isfile(path):
        raise records.DatasetError(f"{path}: missing; expected a file of comma-separated SYSU-MM01 person ids")
    with open(path) as f:
        tokens = [token for token in re.split(r"[,\s]+", f.read()) if token]
    if not tokens:
        raise records.DatasetError(f"{path}: no person ids; expected comma-separated integers like 1,2,4")
    for token in tokens:
        if not token.isdigit():
            raise records.DatasetError(f"{path}: {token!r} is not a person id; expected comma-separated integers")
    return [int(token) for token in tokens]


def _images_of(root, pids, cams):
    """ImageList of every image of ``pids`` in ``cams``, ordered by (pid, cam, file)."""
    paths, out_pids, out_cams, index = [], [], [], []
    for pid in pids:
        for cam in cams:
            folder = os.path.join(root, f"cam{cam}", f"{pid:04d}")
            for i, name in enumerate(records.list_images(folder), start=1):
                paths.append(os.path.join(folder, name))
                out_pids.append(pid)
                out_cams.append(cam)
                index.append(i)
    return records.ImageList.from_lists(paths, out_pids, out_cams, index)


def _check_folders_exist(root, pids, id_file):
    """Every listed id must have a folder in at least one camera."""
    for pid in pids:
        folders = [os.path.join(root, f"cam{cam}", f"{pid:04d}") for cam in range(1, NUM_CAMS + 1)]
        if not any(os.path.isdir(folder) for folder in folders):
            raise records.DatasetError(
                f"{id_file}: person id {pid} has no folder in any camera; expected {root}/cam[1-6]/{pid:04d}/")


def load_sysu(root):
    """Reads SYSU-MM01 at ``root`` into a CrossModalDataset (train = train + val ids)."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise records.DatasetError(f"{root}: not a directory; expected the SYSU-MM01 root (cam1..cam6, exp/)")
    for cam in range(1, NUM_CAMS + 1):
        if not os.path.isdir(os.path.join(root, f"cam{cam}")):
            raise records.DatasetError(f"{os.path.join(root, f'cam{cam}')}: missing camera folder of SYSU-MM01")
    id_files = {split: os.path.join(root, "exp", f"{split}_id.txt") for split in ("train", "val", "test")}
    ids = {split: read_ids(path) for split, path in id_files.items()}
    for split, pids in ids.items():
        _check_folders_exist(root, pids, id_files[split])
    train_pids = sorted(set(ids["train"]) | set(ids["val"]))
    overlap = sorted(set(train_pids) & set(ids["test"]))
    if overlap:
        raise records.DatasetError(
            f"{id_files['test']}: ids {overlap} are also training ids (train_id.txt/val_id.txt); "
            "expected disjoint train and test identities")

    train_rgb = _images_of(root, train_pids, records.SYSU_RGB_CAMS)
    train_ir = _images_of(root, train_pids, records.SYSU_IR_CAMS)
    # A training identity must be seen in both modalities: the cross-modal sampler
    # draws K RGB and K IR images of every identity in a batch.
    for modality, images, cams in (("RGB", train_rgb, records.SYSU_RGB_CAMS), ("IR", train_ir, records.SYSU_IR_CAMS)):
        missing = sorted(set(train_pids) - set(images.pids.tolist()))
        if missing:
            raise records.DatasetError(
                f"{root}: training ids {missing} (exp/train_id.txt, exp/val_id.txt) have no {modality} images; "
                f"expected images in cam{list(cams)}/<pid:04d>/")
    test = _images_of(root, sorted(set(ids["test"])), range(1, NUM_CAMS + 1))
    return records.CrossModalDataset(name="sysu", train_rgb=train_rgb, train_ir=train_ir, test=test)
