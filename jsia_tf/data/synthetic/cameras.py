"""Cameras: a modality, a place and the look of a scene; an image as a camera sees it."""

import dataclasses

import numpy as np

from jsia_tf.data.synthetic.infrared import render_nir, render_thermal
from jsia_tf.data.synthetic.persons import sample_identity, sample_image_draw
from jsia_tf.data.synthetic.visible import render_maps, render_rgb

# Kinds of camera (Camera.infrared): None is RGB.
NIR = "nir"  # near-infrared with active illumination (SYSU-MM01 cams 3, 6)
THERMAL = "thermal"  # long-wave thermal (RegDB)


@dataclasses.dataclass(frozen=True)
class Camera:
    """One camera: its modality, its place and the look of its scene."""

    name: str
    stream: int  # random stream of this camera's image draws
    infrared: str | None  # None: RGB; NIR: near-infrared; THERMAL: thermal
    indoor: bool
    wall: tuple = (0.5, 0.5, 0.5)  # RGB background above the floor line
    floor: tuple = (0.4, 0.4, 0.4)
    white_balance: tuple = (1.0, 1.0, 1.0)  # warm indoor light, cool daylight
    exposure: tuple = (0.85, 1.15)  # range of the per-image gain


REGDB_VISIBLE = Camera("regdb_visible", 100, infrared=None, indoor=False, wall=(0.55, 0.55, 0.52),
                       floor=(0.38, 0.37, 0.36), white_balance=(0.97, 1.0, 1.04))
REGDB_THERMAL = Camera("regdb_thermal", 101, infrared=THERMAL, indoor=False)
SYSU_CAMERAS = {
    1: Camera("sysu_cam1", 201, infrared=None, indoor=True, wall=(0.74, 0.68, 0.56), floor=(0.5, 0.45, 0.38),
              white_balance=(1.08, 1.0, 0.84), exposure=(0.7, 1.0)),
    2: Camera("sysu_cam2", 202, infrared=None, indoor=True, wall=(0.55, 0.6, 0.66), floor=(0.42, 0.42, 0.44),
              white_balance=(1.04, 1.0, 0.9), exposure=(0.65, 0.95)),
    3: Camera("sysu_cam3", 203, infrared=NIR, indoor=True),
    4: Camera("sysu_cam4", 204, infrared=None, indoor=False, wall=(0.45, 0.55, 0.42), floor=(0.5, 0.5, 0.5),
              white_balance=(0.95, 1.0, 1.06), exposure=(0.9, 1.3)),
    5: Camera("sysu_cam5", 205, infrared=None, indoor=False, wall=(0.62, 0.4, 0.34), floor=(0.58, 0.56, 0.52),
              white_balance=(0.96, 1.0, 1.08), exposure=(0.95, 1.3)),
    6: Camera("sysu_cam6", 206, infrared=NIR, indoor=False),
}


_RENDERERS = {None: render_rgb, NIR: render_nir, THERMAL: render_thermal}


def render_image(identity, draw, camera, height, width, maps=None):
    """One image of ``identity``: uint8 [height, width, 3] RGB, or [height, width] IR.

    ``maps``: ``render_maps(identity, draw, height, width)`` when the caller has them
    (one frame seen by several cameras)."""
    labels, rim, crease = maps or render_maps(identity, draw, height, width)
    rng = np.random.default_rng(draw.scene_seed)
    return _RENDERERS[camera.infrared](identity, labels, rim, crease, camera, rng)


def render_identity_images(seed, pid, camera, num_images, height, width):
    """Images 1..num_images of person ``pid`` in ``camera``, as ``generate`` writes them."""
    identity = sample_identity(seed, pid)
    return [render_image(identity, sample_image_draw(seed, pid, camera, index), camera, height, width)
            for index in range(1, num_images + 1)]


SHEET_CAMERAS = (REGDB_VISIBLE, REGDB_THERMAL, SYSU_CAMERAS[3])  # the rows of example_sheet


def example_sheet(height, width, seed=0, num_ids=6):
    """uint8 [3 * height, num_ids * width, 3]: persons 1..num_ids in columns; rows
    RegDB visible, RegDB thermal, SYSU-MM01 near-infrared (camera 3)."""
    rows = []
    for camera in SHEET_CAMERAS:
        images = [render_identity_images(seed, pid, camera, 1, height, width)[0] for pid in range(1, num_ids + 1)]
        if camera.infrared:
            images = [np.repeat(image[..., None], 3, axis=-1) for image in images]
        rows.append(np.concatenate(images, axis=1))
    return np.concatenate(rows, axis=0)
