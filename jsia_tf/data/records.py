"""The in-memory form every dataset reader returns.

A reader (``regdb.py``, ``sysu.py``) turns a dataset folder into a
:class:`CrossModalDataset`: the RGB and IR training images with their person ids,
and every test image with the metadata the evaluation protocols need (person id,
camera, position of the image in its folder). Only file paths are held; the
pixels are decoded by the tf.data pipeline.
"""

import dataclasses
import os

import numpy as np

from jsia_tf import config

# RegDB has one visible and one thermal camera; the evaluation contract
# (``python -m jsia_tf.evaluate``) numbers them 1 and 2.
REGDB_VISIBLE_CAM = 1
REGDB_THERMAL_CAM = 2

# SYSU-MM01 (Wu et al., ICCV 2017): cameras 1, 2, 4, 5 are RGB (1 and 2 indoor),
# 3 and 6 are IR (3 indoor, 6 outdoor).
SYSU_RGB_CAMS = (1, 2, 4, 5)
SYSU_IR_CAMS = config.SYSU_IR_CAMS
SYSU_INDOOR_RGB_CAMS = (1, 2)

IMAGE_SUFFIXES = (".bmp", ".jpg", ".jpeg", ".png")


def list_images(folder):
    """Sorted image file names in ``folder`` ([] if it does not exist).

    The 1-based position in this list is ``ImageList.image_index``: on SYSU-MM01 it is
    what the official ``rand_perm_cam.mat`` gallery draws index.
    """
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_SUFFIXES))


class DatasetError(ValueError):
    """A dataset folder does not look as expected; the message names the path."""


@dataclasses.dataclass(frozen=True)
class ImageList:
    """Images of one modality or one test set, in a fixed order.

    Attributes:
      paths: [N] absolute file paths (str).
      pids: [N] int64 person ids as written in the dataset (not remapped).
      cams: [N] int64 camera ids (SYSU-MM01: 1..6; RegDB: 1 visible, 2 thermal).
      image_index: [N] int64, 1-based position of the file in its sorted
        ``camX/PPPP/`` (SYSU-MM01, what ``rand_perm_cam.mat`` indexes) or
        ``Visible|Thermal/<id>/`` (RegDB) folder.
    """

    paths: np.ndarray
    pids: np.ndarray
    cams: np.ndarray
    image_index: np.ndarray

    def __post_init__(self):
        n = len(self.paths)
        for name in ("pids", "cams", "image_index"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"ImageList.{name} has {len(getattr(self, name))} entries, paths has {n}")

    def __len__(self):
        return len(self.paths)

    @classmethod
    def from_lists(cls, paths, pids, cams, image_index):
        return cls(
            paths=np.asarray(paths, dtype=str),
            pids=np.asarray(pids, dtype=np.int64),
            cams=np.asarray(cams, dtype=np.int64),
            image_index=np.asarray(image_index, dtype=np.int64),
        )


@dataclasses.dataclass(frozen=True)
class CrossModalDataset:
    """One training/test split of an RGB-IR re-ID dataset.

    Attributes:
      name: "regdb" or "sysu".
      train_rgb, train_ir: training images per modality.
      test: every test image (both modalities); the protocol picks query and
        gallery from ``cams``.
    """

    name: str
    train_rgb: ImageList
    train_ir: ImageList
    test: ImageList

    @property
    def train_pids(self):
        """Sorted person ids of the training set; class c is ``train_pids[c]``."""
        return np.union1d(self.train_rgb.pids, self.train_ir.pids)

    @property
    def num_classes(self):
        """Number of training identities: the classifier size comes from here."""
        return len(self.train_pids)

    def train_labels(self, images):
        """Contiguous class labels in [0, num_classes) for training ``images``."""
        return np.searchsorted(self.train_pids, images.pids).astype(np.int64)
