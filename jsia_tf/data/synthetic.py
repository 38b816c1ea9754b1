"""Synthetic RGB-infrared pedestrians in the on-disk layouts of RegDB and SYSU-MM01.

The project's embedded default dataset: procedural pedestrians written exactly as
the real datasets are stored, so one set of readers (``regdb.py``, ``sysu.py``)
serves both. It keeps what makes RGB-IR re-ID hard (Sec. 1 of the paper):

* An identity is a fixed set of attributes drawn from ``(seed, pid)``: body
  proportions, hair, garments (type, colour, print, sleeve and trouser length,
  thickness, an open front showing an inner layer, a collar, folds) and a bag,
  plus its infrared attributes (``Infrared``).
* Every image is an independent draw of pose (walking phase, front / back / side
  view), placement, background clutter, illumination, noise and blur. The RGB and
  IR images of a person come from different draws: the data are unpaired.
* All modalities are rendered from one part-label map. RGB colours the parts; the
  IR renderings read the identity's ``Infrared`` attributes and never a colour, so
  persons who differ only in colour look the same in IR: the IR -> RGB mapping is
  one-to-many, the premise of JSIA-ReID.

The two datasets have different IR cameras, rendered by two models:

* SYSU-MM01's IR cameras (3 and 6) are near-infrared: active NIR illumination,
  image brightness = the part's NIR reflectance x illumination (a falloff from
  the image centre and a per-image gain) + sensor noise, over a dim background.
  Every garment part (upper garment, its print, inner layer, lower garment,
  shoes, bag) and hair has a per-identity NIR reflectance; skin is bright in NIR
  whatever its tone. Prints (stripes, logos) show with the print's reflectance.
* RegDB's IR camera is thermal (long-wave): brightness follows temperature. Skin
  is warm, thick garments cool, bags cold; on top of that each identity has a
  body heat offset, per-garment warmth, an open jacket or coat shows its warmer
  inner layer, a collar is warmed by the neck, and folds are cooler (air pockets)
  or warmer (pressed to the body) bands at the identity's own positions. Prints
  are invisible (ink has no temperature); folds and layers show.

Why the IR attributes are coupled to colour, partly: if every IR attribute were
independent of the visible colour, each modality alone identifies people but
cross-modality matching is near chance (a prototype: RGB->RGB rank-1 94%,
IR->IR 76%, cross-modality ~4%), which real data are not: dyes' NIR reflectance
correlates partly with their visible brightness, and dark fabric absorbs more
sunlight and is warmer outdoors. So at identity-sampling time each garment's IR
attribute is ``a * f(visible luminance) + (1 - a) * U(0, 1)`` with
``a = IR_VISIBLE_COUPLING`` (f: the luminance for NIR reflectance, one minus it
for thermal warmth), and stored in ``Identity.infrared``; the renderers read only
that, so colour never leaks into IR beyond this drawn correlation.

Everything is seeded by ``np.random.default_rng`` over ``(seed, pid, stream,
index)``: runs are reproducible and adding identities leaves earlier ones
byte-identical. ``RENDER_VERSION`` changes whenever the rendered bytes do;
``generate`` records it in ``synthetic.json`` at the dataset root.

Command line::

  python -m jsia_tf.data.synthetic --out=/data/regdb_synth --layout=regdb \
      --num_ids=40 --seed=0 [--height=256 --width=128] [--sheet=docs/synthetic_examples.png]
"""

import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
import tempfile
import zipfile

from absl import app
from absl import flags
import numpy as np
from PIL import Image
from scipy import ndimage

from jsia_tf.data import records

LAYOUTS = ("regdb", "sysu")

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

# Part labels of the label map all modalities are rendered from.
BACKGROUND, FACE, SKIN, HAIR, UPPER, UPPER_PRINT, LOWER, SHOES, BAG, INNER, COLLAR = range(11)
NUM_PARTS = 11

# Kinds of camera (Camera.infrared): None is RGB.
NIR = "nir"  # near-infrared with active illumination (SYSU-MM01 cams 3, 6)
THERMAL = "thermal"  # long-wave thermal (RegDB)

# Independent random streams of one seed; camera streams are Camera.stream.
_STREAM_IDENTITY = 0
_STREAM_SPLIT = 1
_STREAM_PRESENCE = 2
_STREAM_PAIRED = 3

# --- Identity attribute tables ------------------------------------------------
_CLOTHING_COLOURS = np.array([
    (0.08, 0.08, 0.09), (0.90, 0.90, 0.88), (0.50, 0.50, 0.52),  # black, white, grey
    (0.10, 0.13, 0.32), (0.16, 0.32, 0.66), (0.56, 0.70, 0.88),  # navy, blue, light blue
    (0.72, 0.10, 0.12), (0.15, 0.45, 0.22), (0.42, 0.42, 0.20),  # red, green, olive
    (0.72, 0.62, 0.42), (0.42, 0.26, 0.14), (0.92, 0.56, 0.66),  # khaki, brown, pink
    (0.92, 0.80, 0.20), (0.42, 0.20, 0.52), (0.92, 0.50, 0.10),  # yellow, purple, orange
])
_SKIN_TONES = np.array([
    (0.96, 0.80, 0.69), (0.88, 0.68, 0.55), (0.76, 0.57, 0.42), (0.55, 0.38, 0.26), (0.36, 0.24, 0.16),
])
_HAIR_COLOURS = np.array([
    (0.06, 0.05, 0.05), (0.20, 0.13, 0.08), (0.38, 0.25, 0.14), (0.80, 0.68, 0.42), (0.62, 0.62, 0.62),
])
_SHOE_COLOURS = np.array([(0.07, 0.07, 0.07), (0.92, 0.92, 0.92), (0.35, 0.22, 0.12), (0.45, 0.45, 0.47)])

HAIR_LENGTHS = ("short", "medium", "long")
UPPER_TYPES = ("shirt", "jacket", "coat")
UPPER_PRINTS = ("solid", "stripes", "logo")
LOWER_TYPES = ("trousers", "shorts", "skirt")
BAG_TYPES = ("none", "backpack", "handbag", "shoulder")
VIEWS = ("front", "back", "side")
_VIEW_PROBS = (0.4, 0.35, 0.25)

# Garment thickness ranges in [0, 1] (0: thin cotton, 1: padded coat).
_UPPER_THICKNESS = {"shirt": (0.0, 0.3), "jacket": (0.4, 0.7), "coat": (0.7, 1.0)}
# How far a garment hangs below the hip line, in body heights.
_UPPER_DROP = {"shirt": (0.0, 0.02), "jacket": (0.02, 0.05), "coat": (0.12, 0.2)}
# Fraction of the leg covered, from the hip.
_LOWER_COVER = {"trousers": (0.92, 1.0), "shorts": (0.3, 0.5), "skirt": (0.3, 0.8)}

# --- Body geometry, in body heights (ground at v = 0, crown at v = 1) -------
_NECK = 0.03
_ANKLE = 0.035
_UPPER_ARM, _FOREARM = 0.19, 0.16
_ARM_RADII = (0.026, 0.021, 0.017)  # shoulder, elbow, wrist; times the identity's build
_LEG_RADII = (0.048, 0.034, 0.025)  # hip, knee, ankle
_HAND_RADIUS = 0.02
_ARM_SWING = np.radians(24.0)  # amplitude of the arm swing in a walking cycle
_LEG_SWING = np.radians(22.0)
_KNEE_BEND = np.radians(35.0)
_SIDE_DEPTH = 0.32  # torso depth seen from the side, relative to its width

# --- Infrared attributes of an identity ----------------------------------------
# Each garment's IR attribute is IR_VISIBLE_COUPLING * f(visible luminance of its
# colour) + (1 - IR_VISIBLE_COUPLING) * U(0, 1): partly predictable from the RGB
# image (as real dyes and fabrics are), never a function of it.
IR_VISIBLE_COUPLING = 0.4
_LUMA = np.array((0.2126, 0.7152, 0.0722))  # Rec. 709 luminance of an RGB colour

# Near-infrared reflectance ranges, mapped from the attribute in [0, 1].
_NIR_GARMENT = (0.05, 0.95)  # garments, prints, bags: some black dyes are bright in NIR
_NIR_HAIR = (0.1, 0.5)
_NIR_SHOES = (0.05, 0.6)
_NIR_SKIN = (0.55, 0.75)  # skin is fairly bright in NIR, whatever its visible tone
_NIR_SCENE = (0.08, 0.35)  # walls, floor and clutter ...
_NIR_SCENE_FALLOFF = (0.3, 0.6)  # ... farther from the illuminator than the person
_NIR_VIGNETTING = (0.2, 0.5)  # illumination loss from the hot spot to the image edge
_NIR_GAIN = (0.85, 1.3)

# --- Thermal model: temperatures in arbitrary units, 0 cold ... 1 skin ------
_FACE_TEMP, _SKIN_TEMP = 1.0, 0.9
_THIN_GARMENT_TEMP, _THICK_GARMENT_TEMP = 0.68, 0.38
_GARMENT_WARMTH_SPAN = 0.24  # a garment's warmth in [0, 1] moves it by +-half of this
_INNER_TEMP, _INNER_WARMTH_SPAN = 0.72, 0.16  # a thin layer worn on the body
_COLLAR_WARMTH = 0.1  # a collar is warmed by the neck it wraps
_HAIR_TEMPS, _SHOE_TEMPS, _BAG_TEMPS = (0.42, 0.58), (0.28, 0.42), (0.1, 0.22)  # warmth 0 .. 1
_BODY_HEAT = 0.06  # per-identity offset of skin (half of it through garments), +-
_FOLD_TEMP = 0.08  # a fold: + pressed to the body (warmer), - an air pocket (cooler)
_FOLD_SHADING = 0.15  # in RGB and NIR a fold is a shadow
_FOLD_HALF_WIDTH = 0.012  # body heights
_IR_AMBIENT = {True: 0.32, False: 0.12}  # indoor, outdoor background temperature
_HOT_CLUTTER_PROB = 0.15  # lamps, radiators, engines: warm distractors in IR

# Blur sigmas are drawn for images of this height and scaled to the requested one.
_REFERENCE_HEIGHT = 256

# Rounded shapes darken (RGB) and cool (IR, grazing emission) towards their rims.
_RGB_RIM_DARKENING = 0.35
_IR_RIM_COOLING = 0.15

# SYSU-MM01 camera presence: ~60% of ids are seen by the indoor RGB cameras 1 and 2
# (56 of 96 test ids), nearly all by cameras 3-6 (reference_facts.md).
_SYSU_INDOOR_SHARE = 0.6
_SYSU_PRESENCE_PROB = {3: 0.95, 4: 0.97, 5: 0.97, 6: 0.97}
_SYSU_IMAGES_PER_CAM = (4, 12)  # inclusive: some ids fill a 10-image multi-shot gallery
_SYSU_VAL_SHARE = _SYSU_TEST_SHARE = 0.2  # train / val / test ids about 60 / 20 / 20
_SYSU_MIN_IDS = 5
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0

REGDB_TRIALS = 10
REGDB_IMAGES_PER_ID = 10
_REGDB_MIN_IDS = 2
_JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class Colours:
    """Every RGB colour of an identity, in [0, 1]. Nothing here is visible in IR."""

    skin: tuple
    hair: tuple
    upper: tuple
    upper_print: tuple
    inner: tuple  # the layer under an open jacket or coat
    lower: tuple
    shoes: tuple
    bag: tuple


@dataclasses.dataclass(frozen=True)
class Infrared:
    """What the IR cameras see of an identity's materials; the IR renderers read
    these (and the shapes), never ``Colours``.

    ``nir_*``: near-infrared reflectance in [0, 1] (SYSU-MM01 cams 3 and 6).
    ``warmth_*``: thermal warmth in [0, 1] of a part (RegDB thermal), mapped to a
    temperature by ``part_temperatures``. Garment values are coupled to the
    visible luminance of the garment's colour at sampling time (module docstring).
    """

    nir_skin: float
    nir_hair: float
    nir_upper: float
    nir_print: float
    nir_inner: float
    nir_lower: float
    nir_shoes: float
    nir_bag: float
    warmth_hair: float
    warmth_upper: float
    warmth_inner: float
    warmth_lower: float
    warmth_shoes: float
    warmth_bag: float
    body_heat: float  # offset of the skin temperature, in [-1, 1] x _BODY_HEAT


@dataclasses.dataclass(frozen=True)
class Fold:
    """A horizontal fold of a garment, at a fixed place on it."""

    garment: str  # "upper" (torso and sleeves) or "lower"
    offset: float  # body heights below the shoulder line (upper) or the hip line (lower)
    sign: int  # +1 pressed to the body (warmer), -1 an air pocket (cooler)


@dataclasses.dataclass(frozen=True)
class Identity:
    """Fixed attributes of one person. Lengths are in body heights."""

    height: float  # fraction of the image height the person spans
    build: float  # width factor of limbs and torso
    shoulder_width: float
    hip_width: float
    head_radius: float
    hip_height: float  # leg length
    hair_length: str
    upper_type: str
    upper_print: str
    stripe_period: float
    sleeve_cover: float  # fraction of the arm covered by the sleeve
    upper_thickness: float
    upper_drop: float
    lower_type: str
    lower_cover: float  # fraction of the leg covered, from the hip
    lower_thickness: float
    bag: str
    bag_side: int  # +1 the person's right, -1 the left
    open_front: bool  # a jacket or coat worn open: the inner layer shows from the front
    collar: bool
    folds: tuple  # of Fold
    colours: Colours
    infrared: Infrared


@dataclasses.dataclass(frozen=True)
class ImageDraw:
    """Everything random about one image that is not the person."""

    view: str
    facing: int  # side view: +1 walks towards the image right, -1 left
    phase: float  # walking cycle, radians
    dx: float  # horizontal offset, fraction of the image width
    dy: float  # vertical offset, fraction of the image height
    scale: float
    scene_seed: int  # background clutter, illumination, noise and blur


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


def _rng(seed, *stream):
    return np.random.default_rng([seed, *stream])


def _pick(rng, table):
    """A row of a colour table with a little per-channel variation."""
    colour = table[rng.integers(len(table))] * rng.uniform(0.88, 1.12, 3)
    return tuple(np.clip(colour, 0.0, 1.0).tolist())


def _luminance(colour):
    """Visible brightness in [0, 1] of an RGB colour."""
    return float(np.dot(_LUMA, colour))


def _coupled(rng, visible):
    """An IR attribute in [0, 1]: ``IR_VISIBLE_COUPLING`` of it follows ``visible``
    (in [0, 1]), the rest is an independent uniform draw."""
    return float(IR_VISIBLE_COUPLING * visible + (1.0 - IR_VISIBLE_COUPLING) * rng.random())


def _span(bounds, fraction):
    return float(bounds[0] + (bounds[1] - bounds[0]) * fraction)


def _sample_infrared(rng, colours):
    """The identity's IR attributes. Reads the colours here, at sampling time only:
    NIR reflectance rises with visible luminance, thermal warmth with darkness."""
    lum = {name: _luminance(getattr(colours, name)) for name in ("hair", "upper", "upper_print", "inner", "lower",
                                                                   "shoes", "bag")}
    nir = dict(
        nir_skin=_span(_NIR_SKIN, rng.random()), nir_hair=_span(_NIR_HAIR, _coupled(rng, lum["hair"])),
        nir_upper=_span(_NIR_GARMENT, _coupled(rng, lum["upper"])),
        nir_print=_span(_NIR_GARMENT, _coupled(rng, lum["upper_print"])),
        nir_inner=_span(_NIR_GARMENT, _coupled(rng, lum["inner"])),
        nir_lower=_span(_NIR_GARMENT, _coupled(rng, lum["lower"])),
        nir_shoes=_span(_NIR_SHOES, _coupled(rng, lum["shoes"])),
        nir_bag=_span(_NIR_GARMENT, _coupled(rng, lum["bag"])))
    warmth = dict(
        warmth_hair=float(rng.random()), warmth_upper=_coupled(rng, 1.0 - lum["upper"]),
        warmth_inner=_coupled(rng, 1.0 - lum["inner"]), warmth_lower=_coupled(rng, 1.0 - lum["lower"]),
        warmth_shoes=_coupled(rng, 1.0 - lum["shoes"]), warmth_bag=_coupled(rng, 1.0 - lum["bag"]))
    return Infrared(**nir, **warmth, body_heat=float(rng.uniform(-1.0, 1.0)))


def _sample_folds(rng, hip_height, lower_type, lower_cover):
    """0-2 folds on the upper garment (waist, elbows) and 0-2 on the lower one."""
    folds = [Fold("upper", float(rng.uniform(0.12, 0.32)), int(rng.choice((-1, 1))))
             for _ in range(rng.choice(3, p=(0.2, 0.45, 0.35)))]
    reach = lower_cover * (hip_height - _ANKLE)  # what the lower garment covers below the hip
    if lower_type == "skirt":
        reach = max(0.0, reach - 0.05)
    if reach > 0.1:
        folds += [Fold("lower", float(rng.uniform(0.08, reach)), int(rng.choice((-1, 1))))
                  for _ in range(rng.choice(3, p=(0.2, 0.45, 0.35)))]
    return tuple(folds)


def sample_identity(seed, pid):
    """The fixed attributes of person ``pid``; depends on ``(seed, pid)`` only."""
    rng = _rng(seed, pid, _STREAM_IDENTITY)
    upper_type = UPPER_TYPES[rng.integers(3)]
    lower_type = LOWER_TYPES[rng.choice(3, p=(0.6, 0.2, 0.2))]
    # Jackets and coats have long sleeves; shirts are sleeveless, short or long.
    sleeve = 1.0 if upper_type != "shirt" else (0.0, rng.uniform(0.3, 0.45), rng.uniform(0.9, 1.0))[
        rng.choice(3, p=(0.15, 0.45, 0.4))]
    colours = Colours(
        skin=_pick(rng, _SKIN_TONES), hair=_pick(rng, _HAIR_COLOURS), upper=_pick(rng, _CLOTHING_COLOURS),
        upper_print=_pick(rng, _CLOTHING_COLOURS), inner=_pick(rng, _CLOTHING_COLOURS),
        lower=_pick(rng, _CLOTHING_COLOURS), shoes=_pick(rng, _SHOE_COLOURS), bag=_pick(rng, _CLOTHING_COLOURS))
    hip_height = rng.uniform(0.46, 0.52)
    lower_cover = rng.uniform(*_LOWER_COVER[lower_type])
    return Identity(
        height=rng.uniform(0.82, 0.93), build=rng.uniform(0.85, 1.2),
        shoulder_width=rng.uniform(0.2, 0.25), hip_width=rng.uniform(0.15, 0.19),
        head_radius=rng.uniform(0.056, 0.068), hip_height=hip_height,
        hair_length=HAIR_LENGTHS[rng.integers(3)],
        upper_type=upper_type, upper_print=UPPER_PRINTS[rng.integers(3)],
        stripe_period=rng.uniform(0.025, 0.05), sleeve_cover=sleeve,
        upper_thickness=rng.uniform(*_UPPER_THICKNESS[upper_type]), upper_drop=rng.uniform(*_UPPER_DROP[upper_type]),
        lower_type=lower_type, lower_cover=lower_cover, lower_thickness=rng.uniform(0.1, 0.7),
        bag=BAG_TYPES[rng.choice(4, p=(0.4, 0.25, 0.15, 0.2))], bag_side=int(rng.choice((-1, 1))),
        open_front=bool(upper_type != "shirt" and rng.random() < 0.5),
        collar=bool(rng.random() < (0.3 if upper_type == "shirt" else 0.6)),
        folds=_sample_folds(rng, hip_height, lower_type, lower_cover),
        colours=colours, infrared=_sample_infrared(rng, colours))


def sample_image_draw(seed, pid, camera, index):
    """The random draw of image ``index`` of person ``pid`` in ``camera``.

    Each (camera, index) has its own stream, so a person's RGB and IR images share
    no pose, view or scene: the modalities are unpaired.
    """
    return _draw(_rng(seed, pid, camera.stream, index))


def _draw(rng):
    return ImageDraw(
        view=VIEWS[rng.choice(3, p=_VIEW_PROBS)], facing=int(rng.choice((-1, 1))),
        phase=rng.uniform(0.0, 2.0 * np.pi), dx=rng.uniform(-0.07, 0.07), dy=rng.uniform(-0.03, 0.02),
        scale=rng.uniform(0.92, 1.04), scene_seed=int(rng.integers(2**32)))


class _Canvas:
    """A part-label map and a rim map, painted shape by shape in body units.

    Body units: ``u`` to the image right and ``v`` up from the ground, both in body
    heights. Each shape is rasterised only over its bounding box.
    """

    def __init__(self, height, width, centre_x, ground_y, unit):
        self.labels = np.zeros((height, width), np.uint8)
        self.rim = np.zeros((height, width), np.float32)  # 0 on a shape's axis, 1 on its outline
        self._cx, self._ground, self._unit = centre_x, ground_y, unit

    def _grid(self, u0, v0, u1, v1):
        """Pixel slices and pixel-centre body coordinates covering a body-unit box."""
        height, width = self.labels.shape
        c0 = max(int(np.floor(self._cx + u0 * self._unit)), 0)
        c1 = min(int(np.ceil(self._cx + u1 * self._unit)), width)
        r0 = max(int(np.floor(self._ground - v1 * self._unit)), 0)
        r1 = min(int(np.ceil(self._ground - v0 * self._unit)), height)
        if c0 >= c1 or r0 >= r1:
            return None
        u = ((np.arange(c0, c1, dtype=np.float32) + 0.5 - self._cx) / self._unit)[None, :]
        v = ((self._ground - np.arange(r0, r1, dtype=np.float32) - 0.5) / self._unit)[:, None]
        return (slice(r0, r1), slice(c0, c1)), u, v

    def _fill(self, region, inside, rim, label, over):
        labels = self.labels[region]
        if over is not None:  # a print: recolour the garment, keep its shape and shading
            labels[inside & (labels == over)] = label
            return
        labels[inside] = label
        self.rim[region][inside] = np.broadcast_to(rim, inside.shape)[inside]

    def ellipse(self, centre, radii, label, clip=(-np.inf, -np.inf, np.inf, np.inf)):
        """An axis-aligned ellipse, cut to the body-unit box ``clip`` (u0, v0, u1, v1)."""
        (uc, vc), (ru, rv) = centre, radii
        box = (max(uc - ru, clip[0]), max(vc - rv, clip[1]), min(uc + ru, clip[2]), min(vc + rv, clip[3]))
        grid = self._grid(*box)
        if grid is None:
            return
        region, u, v = grid
        radius = np.sqrt(((u - uc) / ru) ** 2 + ((v - vc) / rv) ** 2)
        inside = (radius <= 1.0) & (u >= clip[0]) & (u <= clip[2]) & (v >= clip[1]) & (v <= clip[3])
        self._fill(region, inside, np.minimum(radius, 1.0), label, None)

    def capsule(self, a, b, radius_a, radius_b, label):
        """A limb segment from ``a`` to ``b`` whose radius tapers linearly."""
        (ua, va), (ub, vb) = a, b
        reach = max(radius_a, radius_b)
        grid = self._grid(min(ua, ub) - reach, min(va, vb) - reach, max(ua, ub) + reach, max(va, vb) + reach)
        if grid is None:
            return
        region, u, v = grid
        du, dv = ub - ua, vb - va
        t = np.clip(((u - ua) * du + (v - va) * dv) / max(du * du + dv * dv, 1e-12), 0.0, 1.0)
        dist = np.hypot(u - ua - t * du, v - va - t * dv)
        radius = radius_a + (radius_b - radius_a) * t
        inside = dist <= radius
        self._fill(region, inside, dist / radius, label, None)

    def trapezoid(self, top, bottom, half_top, half_bottom, label, over=None):
        """Rows from ``top`` down to ``bottom`` (centres), half-width interpolated."""
        (ut, vt), (ub, vb) = top, bottom
        reach = max(half_top, half_bottom)
        grid = self._grid(min(ut, ub) - reach, vb, max(ut, ub) + reach, vt)
        if grid is None:
            return
        region, u, v = grid
        s = (vt - v) / (vt - vb)  # 0 at the top row, 1 at the bottom row
        offset = np.abs(u - (ut + s * (ub - ut)))
        half = half_top + s * (half_bottom - half_top)
        inside = (offset <= half) & (s >= 0.0) & (s <= 1.0)
        self._fill(region, inside, offset / half, label, over)

    def box(self, centre, half_size, corner, label, over=None):
        """A rounded rectangle (bags, logos)."""
        (uc, vc), (hu, hv) = centre, half_size
        grid = self._grid(uc - hu, vc - hv, uc + hu, vc + hv)
        if grid is None:
            return
        region, u, v = grid
        qu, qv = np.abs(u - uc) - (hu - corner), np.abs(v - vc) - (hv - corner)
        outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0)) + np.minimum(np.maximum(qu, qv), 0.0) - corner
        self._fill(region, outside <= 0.0, np.abs(u - uc) / hu, label, over)

    def rows_v(self):
        """[height] body-unit ``v`` of each pixel row's centre."""
        return (self._ground - np.arange(self.labels.shape[0], dtype=np.float32) - 0.5) / self._unit

    def stripes(self, v0, period, label, over):
        """Horizontal bands: every other ``period`` above ``v0`` becomes ``label``."""
        band = (np.floor((self.rows_v() - v0) / period) % 2 == 1)[:, None]
        self.labels[band & (self.labels == over)] = label

    def folds(self, folds, shoulder_v, hip_v):
        """[height, width] float32: each fold's signed profile (+-1 on its line, 0 off
        it) over the pixels of its garment; zero where there is no fold."""
        crease = np.zeros(self.labels.shape, np.float32)
        rows = self.rows_v()
        for garment, parts, line in (("upper", (UPPER, UPPER_PRINT, INNER), shoulder_v), ("lower", (LOWER,), hip_v)):
            profile = np.zeros_like(rows)
            for fold in folds:
                if fold.garment == garment:
                    profile += fold.sign * np.maximum(1.0 - np.abs(rows - (line - fold.offset)) / _FOLD_HALF_WIDTH, 0.0)
            rows_on = np.flatnonzero(profile)
            if rows_on.size:
                band = slice(rows_on[0], rows_on[-1] + 1)
                labels = self.labels[band]
                on = labels == parts[0]
                for part in parts[1:]:
                    on |= labels == part
                crease[band] += np.where(on, profile[band, None], 0.0)
        return crease


def _limb(canvas, joints, radii, cover, cover_label, puff):
    """Skin along a 3-joint chain; the first ``cover`` of its length clothed."""
    for a, b, ra, rb in zip(joints[:-1], joints[1:], radii[:-1], radii[1:]):
        canvas.capsule(a, b, ra, rb, SKIN)
    lengths = [np.hypot(b[0] - a[0], b[1] - a[1]) for a, b in zip(joints[:-1], joints[1:])]
    remaining = cover * sum(lengths)
    for a, b, ra, rb, length in zip(joints[:-1], joints[1:], radii[:-1], radii[1:], lengths):
        if remaining <= 0.0:
            break
        t = min(remaining / length, 1.0)
        end = (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
        canvas.capsule(a, end, ra * puff, (ra + t * (rb - ra)) * puff, cover_label)
        remaining -= length


def _leg_joints(hip, phase, facing, side_view):
    """Hip, knee, ankle of one leg. Side view: thigh swing and knee bend; front/back:
    the swinging foot lifts."""
    thigh = shin = (hip[1] - _ANKLE) / 2.0
    if side_view:
        swing = _LEG_SWING * np.sin(phase)
        shin_angle = swing - _KNEE_BEND * max(0.0, np.cos(phase))
        knee = (hip[0] + facing * thigh * np.sin(swing), hip[1] - thigh * np.cos(swing))
        return hip, knee, (knee[0] + facing * shin * np.sin(shin_angle), knee[1] - shin * np.cos(shin_angle))
    lift = 0.04 * max(0.0, np.sin(phase))
    return hip, (hip[0], hip[1] - thigh + lift / 2.0), (hip[0] * 0.9, _ANKLE + lift)


def _arm_joints(shoulder, phase, facing, side_view, outward):
    """Shoulder, elbow, wrist of one arm, swinging against the leg of its side."""
    swing = _ARM_SWING * np.sin(phase + np.pi)
    if side_view:
        fore = swing + np.radians(20.0)  # the forearm bends forward
        elbow = (shoulder[0] + facing * _UPPER_ARM * np.sin(swing), shoulder[1] - _UPPER_ARM * np.cos(swing))
        return shoulder, elbow, (elbow[0] + facing * _FOREARM * np.sin(fore), elbow[1] - _FOREARM * np.cos(fore))
    shorten = np.cos(swing)  # seen from the front, a swinging arm looks shorter
    elbow = (shoulder[0] + outward * 0.012, shoulder[1] - _UPPER_ARM * shorten)
    return shoulder, elbow, (elbow[0] - outward * 0.004, elbow[1] - _FOREARM * shorten)


@dataclasses.dataclass(frozen=True)
class _Pose:
    """One person's joints and widths in one image, in body units.

    Limbs come in pairs, index 0 being the far one in the side view; each arm swings
    against the leg of its side.
    """

    facing: int  # side view: +1 towards the image right; 1 otherwise
    bag_side: int  # image side of the bag (+1 right), 0 when the body hides it
    head_v: float
    shoulder_v: float
    hip_v: float
    shoulder_half: float  # torso half-width (front, back) or half-depth (side)
    hip_half: float
    arms: tuple  # 2 x (shoulder, elbow, wrist)
    legs: tuple  # 2 x (hip, knee, ankle)
    arm_radii: tuple
    leg_radii: tuple


def _bag_image_side(ident, view, facing):
    """Image side (+1 right) of the bag, or 0 when the body hides it (side view, far side)."""
    if view == "front":
        return -ident.bag_side  # the person's right appears on the image left
    if view == "back":
        return ident.bag_side
    near_side = -facing  # walking to the image right, the person's left faces the camera
    return facing if ident.bag_side == near_side else 0


def _pose(ident, draw):
    side_view = draw.view == "side"
    facing = draw.facing if side_view else 1
    depth = _SIDE_DEPTH if side_view else 0.5
    shoulder_half = ident.shoulder_width * ident.build * depth
    hip_half = ident.hip_width * ident.build * depth
    arm_radii = tuple(r * ident.build for r in _ARM_RADII)
    leg_radii = tuple(r * ident.build for r in _LEG_RADII)
    sides_phases = ((-1, draw.phase), (1, draw.phase + np.pi))
    hip_u = 0.0 if side_view else hip_half - leg_radii[0]
    legs = [_leg_joints((side * hip_u, ident.hip_height), phase, facing, side_view) for side, phase in sides_phases]
    bob = min(leg[2][1] for leg in legs) - _ANKLE  # a stride lowers the hips; a foot stays on the ground
    legs = tuple(tuple((u, v - bob) for u, v in leg) for leg in legs)
    head_v = 1.0 - ident.head_radius - bob
    shoulder_v = head_v - ident.head_radius - _NECK
    shoulder_u = 0.0 if side_view else shoulder_half - arm_radii[0]
    arms = tuple(_arm_joints((side * shoulder_u, shoulder_v - 0.015), phase, facing, side_view, side)
                 for side, phase in sides_phases)
    return _Pose(facing=facing, bag_side=_bag_image_side(ident, draw.view, facing), head_v=head_v,
                 shoulder_v=shoulder_v, hip_v=ident.hip_height - bob, shoulder_half=shoulder_half,
                 hip_half=hip_half, arms=arms, legs=legs, arm_radii=arm_radii, leg_radii=leg_radii)


def _paint_arm(canvas, ident, pose, arm):
    joints = pose.arms[arm]
    _limb(canvas, joints, pose.arm_radii, ident.sleeve_cover, UPPER, 1.15 + 0.35 * ident.upper_thickness)
    canvas.ellipse(joints[2], (_HAND_RADIUS, 1.2 * _HAND_RADIUS), SKIN)


def _paint_legs_and_trunk(canvas, ident, pose, side_view):
    """Legs and shoes, lower garment, neck, upper garment: every view alike."""
    f = pose.facing
    cover = 0.0 if ident.lower_type == "skirt" else ident.lower_cover  # a skirt hangs free of the legs
    for leg in pose.legs:
        _limb(canvas, leg, pose.leg_radii, cover, LOWER, 1.1 + 0.3 * ident.lower_thickness)
        toe, length = (0.025 * f, 0.045) if side_view else (0.0, 0.03)
        canvas.ellipse((leg[2][0] + toe, leg[2][1] - 0.012), (length, 0.02), SHOES)
    hip_v, hip_half = pose.hip_v, pose.hip_half
    if ident.lower_type == "skirt":
        hem = hip_v - ident.lower_cover * (hip_v - _ANKLE)
        canvas.trapezoid((0.0, hip_v + 0.05), (0.0, hem), hip_half, hip_half + 0.08 * ident.lower_cover, LOWER)
    else:
        canvas.trapezoid((0.0, hip_v + 0.05), (0.0, hip_v - 0.06), hip_half, hip_half + 0.01, LOWER)
    canvas.trapezoid((0.0, pose.head_v - 0.5 * ident.head_radius), (0.0, pose.shoulder_v - 0.02), 0.035, 0.04, SKIN)
    waist_v = hip_v + 0.03
    lean = 0.01 * f if side_view else 0.0
    canvas.trapezoid((lean, pose.shoulder_v + 0.012), (0.0, waist_v), pose.shoulder_half, 1.02 * hip_half, UPPER)
    if ident.upper_drop > 0.0:  # jackets and coats hang over the hips
        canvas.trapezoid((0.0, waist_v), (0.0, waist_v - ident.upper_drop - 0.03), 1.02 * hip_half,
                         hip_half + 0.02 + 0.1 * ident.upper_drop, UPPER)
    if ident.collar:  # around the neck, seen from every side
        canvas.trapezoid((lean, pose.shoulder_v + 0.028), (lean, pose.shoulder_v - 0.002), 0.045, 0.06, COLLAR)


def _paint_open_front(canvas, ident, pose):
    """An open jacket or coat: the inner layer between its fronts, chest to hem."""
    canvas.trapezoid((0.0, pose.shoulder_v + 0.01), (0.0, pose.hip_v - ident.upper_drop), 0.4 * pose.shoulder_half,
                     0.22 * pose.hip_half, INNER, over=UPPER)


def _paint_head(canvas, ident, pose, view):
    r, head_v, f = ident.head_radius, pose.head_v, pose.facing
    if view == "back":
        canvas.ellipse((0.0, head_v), (0.86 * r, 1.02 * r), HAIR)
        return
    lean = 0.12 * r * f if view == "side" else 0.0
    canvas.ellipse((lean, head_v), (0.82 * r, r), FACE)
    fringe = 0.3 * r if ident.hair_length == "short" else 0.12 * r
    canvas.ellipse((0.5 * lean, head_v + 0.12 * r), (0.9 * r, 0.92 * r), HAIR,
                   clip=(-np.inf, head_v + fringe, np.inf, np.inf))
    if view == "side":  # the back of the head
        back = (-np.inf, 0.0) if f > 0 else (0.0, np.inf)
        canvas.ellipse((-0.1 * r * f, head_v + 0.04 * r), (0.86 * r, 0.98 * r), HAIR,
                       clip=(back[0], -np.inf, back[1], head_v + 0.5 * r))


def _paint_hair_fall(canvas, ident, pose, centre_u=0.0):
    """Medium hair covers the neck, long hair falls down the back."""
    if ident.hair_length == "short":
        return
    end = pose.shoulder_v - 0.13 if ident.hair_length == "long" else pose.shoulder_v + 0.01
    r = ident.head_radius
    canvas.trapezoid((centre_u, pose.head_v), (centre_u, end), 0.85 * r, r, HAIR)


def _paint_handbag(canvas, wrist):
    canvas.box((wrist[0], wrist[1] - 0.06), (0.05, 0.045), 0.012, BAG)


def _paint_shoulder_bag(canvas, pose, strap):
    """The bag at the hip on its image side (centred when seen from the side)."""
    centre = (pose.bag_side * (pose.hip_half + 0.02), pose.hip_v + 0.03)
    if strap:  # across the chest or back from the other shoulder
        canvas.capsule((-pose.bag_side * 0.6 * pose.shoulder_half, pose.shoulder_v + 0.005),
                       (centre[0], centre[1] + 0.05), 0.008, 0.008, BAG)
    canvas.box(centre, (0.05, 0.05), 0.015, BAG)


def _bag_wrist(pose):
    """Front and back views: the wrist on the bag's image side."""
    return max(pose.arms, key=lambda arm: arm[2][0] * pose.bag_side)[2]


def _paint_front(canvas, ident, pose):
    _paint_hair_fall(canvas, ident, pose)  # behind the shoulders
    _paint_legs_and_trunk(canvas, ident, pose, side_view=False)
    if ident.open_front:
        _paint_open_front(canvas, ident, pose)
    if ident.bag == "shoulder":
        _paint_shoulder_bag(canvas, pose, strap=True)
    for arm in (0, 1):
        _paint_arm(canvas, ident, pose, arm)
    _paint_head(canvas, ident, pose, "front")
    if ident.bag == "backpack":  # seen from the front, a backpack is only its straps
        for side in (-1, 1):
            canvas.trapezoid((side * 0.55 * pose.shoulder_half, pose.shoulder_v + 0.008),
                             (side * 0.5 * pose.shoulder_half, pose.shoulder_v - 0.17), 0.012, 0.012, BAG)
    if ident.bag == "handbag":
        _paint_handbag(canvas, _bag_wrist(pose))
    if ident.upper_print == "logo":  # printed on the chest only; beside the opening of an open front
        centre_u = 0.62 * pose.shoulder_half if ident.open_front else 0.0
        canvas.box((centre_u, pose.shoulder_v - 0.08), (0.035, 0.028), 0.008, UPPER_PRINT, over=UPPER)


def _paint_back(canvas, ident, pose):
    _paint_legs_and_trunk(canvas, ident, pose, side_view=False)
    if ident.bag == "backpack":
        canvas.box((0.0, pose.shoulder_v - 0.12), (0.78 * pose.shoulder_half, 0.12), 0.025, BAG)
    if ident.bag == "shoulder":
        _paint_shoulder_bag(canvas, pose, strap=True)
    for arm in (0, 1):
        _paint_arm(canvas, ident, pose, arm)
    _paint_head(canvas, ident, pose, "back")
    _paint_hair_fall(canvas, ident, pose)
    if ident.bag == "handbag":
        _paint_handbag(canvas, _bag_wrist(pose))


def _paint_side(canvas, ident, pose):
    f, hidden = pose.facing, pose.bag_side == 0
    far, near = 0, 1
    # Behind the body: far arm, a bag on the far side, the backpack.
    if ident.bag == "handbag" and hidden:
        _paint_handbag(canvas, pose.arms[far][2])
    _paint_arm(canvas, ident, pose, far)
    if ident.bag == "backpack":
        canvas.box((-f * (pose.shoulder_half + 0.045), pose.shoulder_v - 0.12), (0.05, 0.12), 0.02, BAG)
    if ident.bag == "shoulder" and hidden:
        _paint_shoulder_bag(canvas, pose, strap=False)
    _paint_legs_and_trunk(canvas, ident, pose, side_view=True)
    _paint_hair_fall(canvas, ident, pose, centre_u=-0.3 * ident.head_radius * f)
    _paint_head(canvas, ident, pose, "side")
    if ident.bag in ("shoulder", "backpack"):  # the strap crosses the near shoulder
        canvas.capsule((-0.4 * f * pose.shoulder_half, pose.shoulder_v + 0.005),
                       (0.6 * f * pose.shoulder_half, pose.shoulder_v - 0.16), 0.009, 0.009, BAG)
    if ident.bag == "shoulder" and not hidden:
        _paint_shoulder_bag(canvas, dataclasses.replace(pose, bag_side=0), strap=False)
    _paint_arm(canvas, ident, pose, near)
    if ident.bag == "handbag" and not hidden:
        _paint_handbag(canvas, pose.arms[near][2])


_PAINTERS = {"front": _paint_front, "back": _paint_back, "side": _paint_side}


def render_maps(identity, draw, height, width):
    """The maps every modality is rendered from: shapes painted back to front for the view.

    Returns:
      labels: [height, width] uint8 part labels (BACKGROUND ... COLLAR).
      rim: [height, width] float32 in [0, 1], distance from each shape's axis to its
        outline (0 on the axis): shading in RGB and NIR, cooling in thermal.
      crease: [height, width] float32 in [-1, 1], the identity's folds: a shadow in
        RGB and NIR, warmer (+) or cooler (-) in thermal; 0 elsewhere.
    """
    unit = identity.height * draw.scale * height  # pixels per body height
    canvas = _Canvas(height, width, width * (0.5 + draw.dx), height * (0.97 + draw.dy), unit)
    pose = _pose(identity, draw)
    _PAINTERS[draw.view](canvas, identity, pose)
    if identity.upper_print == "stripes":  # a print recolours the garment (and its NIR reflectance) only
        canvas.stripes(pose.shoulder_v, identity.stripe_period, UPPER_PRINT, over=UPPER)
    crease = canvas.folds(identity.folds, pose.shoulder_v, pose.hip_v)
    return canvas.labels, canvas.rim, crease


def render_parts(identity, draw, height, width):
    """The part-label map and rim map of one image (``render_maps`` without folds)."""
    labels, rim, _ = render_maps(identity, draw, height, width)
    return labels, rim


def part_temperatures(identity):
    """[NUM_PARTS] thermal temperature of each part (BACKGROUND's is unused).

    Reads ``identity.infrared`` and garment thickness, no colour. Skin is warm,
    thin garments warmer than thick ones, bags cold; each garment's warmth and the
    identity's body heat move these. A print has its garment's temperature.
    """
    ir = identity.infrared
    heat = _BODY_HEAT * ir.body_heat

    def garment(thickness, warmth):
        base = _THIN_GARMENT_TEMP + (_THICK_GARMENT_TEMP - _THIN_GARMENT_TEMP) * thickness
        return base + _GARMENT_WARMTH_SPAN * (warmth - 0.5) + 0.5 * heat

    temps = np.zeros(NUM_PARTS, np.float32)
    temps[FACE], temps[SKIN] = _FACE_TEMP + heat, _SKIN_TEMP + heat
    temps[HAIR] = _span(_HAIR_TEMPS, ir.warmth_hair) + 0.5 * heat
    temps[[UPPER, UPPER_PRINT]] = garment(identity.upper_thickness, ir.warmth_upper)
    temps[COLLAR] = temps[UPPER] + _COLLAR_WARMTH
    temps[INNER] = _INNER_TEMP + _INNER_WARMTH_SPAN * (ir.warmth_inner - 0.5) + 0.5 * heat
    temps[LOWER] = garment(identity.lower_thickness, ir.warmth_lower)
    temps[SHOES] = _span(_SHOE_TEMPS, ir.warmth_shoes)
    temps[BAG] = _span(_BAG_TEMPS, ir.warmth_bag)
    return temps


def part_nir_reflectance(identity):
    """[NUM_PARTS] near-infrared reflectance of each part (BACKGROUND's is unused).

    Reads ``identity.infrared``, no colour. A print has its own reflectance; a
    collar is the upper garment's fabric.
    """
    ir = identity.infrared
    reflectance = np.zeros(NUM_PARTS, np.float32)
    for label, value in ((FACE, ir.nir_skin), (SKIN, ir.nir_skin), (HAIR, ir.nir_hair), (UPPER, ir.nir_upper),
                         (UPPER_PRINT, ir.nir_print), (LOWER, ir.nir_lower), (SHOES, ir.nir_shoes),
                         (BAG, ir.nir_bag), (INNER, ir.nir_inner), (COLLAR, ir.nir_upper)):
        reflectance[label] = value
    return reflectance


def _part_colours(identity):
    """[NUM_PARTS, 3] RGB colour of each part (BACKGROUND's is unused)."""
    c = identity.colours
    colours = np.zeros((NUM_PARTS, 3), np.float32)
    for label, colour in ((FACE, c.skin), (SKIN, c.skin), (HAIR, c.hair), (UPPER, c.upper),
                          (UPPER_PRINT, c.upper_print), (LOWER, c.lower), (SHOES, c.shoes), (BAG, c.bag),
                          (INNER, c.inner), (COLLAR, c.upper)):
        colours[label] = colour
    return colours


def _clutter(rng, height, width, image, values):
    """Paints 3-7 random rectangles (shelves, doors, poles, cars) with ``values(n)``."""
    count = rng.integers(3, 8)
    y0 = rng.integers(0, height, count)
    x0 = rng.integers(-width // 4, width, count)
    h = rng.integers(height // 16, height // 2, count)
    w = np.where(rng.random(count) < 0.3, rng.integers(2, max(width // 16, 3), count),
                 rng.integers(width // 8, width // 2, count))  # some thin poles
    for i, value in enumerate(values(count)):
        image[y0[i]:y0[i] + h[i], max(x0[i], 0):max(x0[i] + w[i], 0)] = value


def _blur_and_noise(image, rng, blur, noise):
    """Optical blur, then sensor noise; sigmas in pixels / intensity units."""
    sigma = (blur, blur) + (0,) * (image.ndim - 2)
    image = ndimage.gaussian_filter(image, sigma, truncate=2.5)
    # Uniform noise of standard deviation `noise`: 4x cheaper to draw than Gaussian.
    image += (rng.random(image.shape, dtype=np.float32) - 0.5) * (noise * np.sqrt(12.0))
    return image


def _to_uint8(image):
    return np.clip(image * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def _render_rgb(identity, labels, rim, crease, camera, rng):
    """uint8 [H, W, 3]: the camera's scene, the person's colours, light and sensor."""
    height, width = labels.shape
    # The camera's own wall and floor, lit a little differently in every image.
    image = np.empty((height, width, 3), np.float32)
    horizon = int(height * rng.uniform(0.55, 0.8))
    image[:horizon] = np.asarray(camera.wall) * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)
    image[horizon:] = np.asarray(camera.floor) * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)

    def clutter_colours(n):
        mix = rng.uniform(0.2, 0.7, (n, 1))
        other = _CLOTHING_COLOURS[rng.integers(len(_CLOTHING_COLOURS), size=n)]
        return (1.0 - mix) * np.asarray(camera.wall) + mix * other

    _clutter(rng, height, width, image, clutter_colours)
    person = labels != BACKGROUND
    shading = (1.0 - _RGB_RIM_DARKENING * np.square(rim[person])) * (1.0 - _FOLD_SHADING * np.abs(crease[person]))
    image[person] = _part_colours(identity)[labels[person]] * shading[:, None]
    # Light from above, camera white balance and exposure.
    light = np.linspace(1.1, 0.85, height, dtype=np.float32)[:, None, None]
    image *= light * (rng.uniform(*camera.exposure) * np.asarray(camera.white_balance, np.float32))
    blur = rng.uniform(0.3, 0.8) * height / _REFERENCE_HEIGHT
    noise = rng.uniform(0.015, 0.035) if camera.indoor else rng.uniform(0.008, 0.02)  # dim rooms are noisier
    return _to_uint8(_blur_and_noise(image, rng, blur, noise))


def _render_nir(identity, labels, rim, crease, camera, rng):
    """uint8 [H, W]: NIR reflectance of the scene and the person's parts under the
    camera's own illuminator (brightest at a hot spot, falling off outwards), sensor."""
    height, width = labels.shape
    # Walls, floor and clutter have their own reflectance; being farther from the
    # illuminator than the person, they stay dim.
    scene = np.empty((height, width), np.float32)
    horizon = int(height * rng.uniform(0.55, 0.8))
    scene[:horizon], scene[horizon:] = rng.uniform(*_NIR_SCENE, 2)
    _clutter(rng, height, width, scene, lambda n: rng.uniform(*_NIR_SCENE, n))
    scene *= rng.uniform(*_NIR_SCENE_FALLOFF)
    person = labels != BACKGROUND
    shading = (1.0 - _RGB_RIM_DARKENING * np.square(rim[person])) * (1.0 - _FOLD_SHADING * np.abs(crease[person]))
    scene[person] = part_nir_reflectance(identity)[labels[person]] * shading
    # Illumination: a hot spot near the image centre, vignetting outwards, per-image gain.
    centre_y, centre_x = rng.uniform(-0.2, 0.2, 2)
    y = np.square(np.linspace(-1.0, 1.0, height, dtype=np.float32) - centre_y)[:, None]
    x = np.square(np.linspace(-1.0, 1.0, width, dtype=np.float32) - centre_x)[None, :]
    light = rng.uniform(*_NIR_GAIN) * (1.0 - 0.5 * rng.uniform(*_NIR_VIGNETTING) * (x + y))
    blur = rng.uniform(0.5, 1.1) * height / _REFERENCE_HEIGHT
    return _to_uint8(_blur_and_noise(scene * light, rng, blur, rng.uniform(0.015, 0.035)))


def _render_thermal(identity, labels, rim, crease, camera, rng):
    """uint8 [H, W]: temperatures of the scene and the person's parts, sensor."""
    height, width = labels.shape
    ambient = _IR_AMBIENT[camera.indoor] + rng.uniform(-0.05, 0.05)
    background = np.full((height, width), ambient, np.float32)
    background += np.linspace(-0.04, 0.04, height, dtype=np.float32)[:, None]  # the ground holds heat

    def temperatures(n):
        hot = rng.random(n) < _HOT_CLUTTER_PROB
        return np.where(hot, rng.uniform(0.6, 0.9, n), ambient + rng.uniform(-0.1, 0.12, n))

    _clutter(rng, height, width, background, temperatures)
    person = part_temperatures(identity)[labels] + rng.uniform(-0.03, 0.03)  # warmer or colder day
    person += _FOLD_TEMP * crease
    person = ambient + (person - ambient) * (1.0 - _IR_RIM_COOLING * np.square(rim))
    temperature = np.where(labels == BACKGROUND, background, person)
    # Automatic gain control: the display range follows the scene, not absolute temperature.
    low, high = ambient - rng.uniform(0.05, 0.15), rng.uniform(0.95, 1.1)
    image = (temperature - low) / (high - low)
    # Thermal optics are softer than RGB ones.
    blur = rng.uniform(0.8, 1.6) * height / _REFERENCE_HEIGHT
    image = _blur_and_noise(image, rng, blur, rng.uniform(0.01, 0.025))
    image += rng.uniform(-0.02, 0.02, width).astype(np.float32)  # bolometer column offsets
    return _to_uint8(image)


_RENDERERS = {None: _render_rgb, NIR: _render_nir, THERMAL: _render_thermal}


def render_image(identity, draw, camera, height=256, width=128, maps=None):
    """One image of ``identity``: uint8 [height, width, 3] RGB, or [height, width] IR.

    ``maps``: ``render_maps(identity, draw, height, width)`` when the caller has them
    (one frame seen by several cameras)."""
    labels, rim, crease = maps or render_maps(identity, draw, height, width)
    rng = np.random.default_rng(draw.scene_seed)
    return _RENDERERS[camera.infrared](identity, labels, rim, crease, camera, rng)


def render_identity_images(seed, pid, camera, num_images, height=256, width=128):
    """Images 1..num_images of person ``pid`` in ``camera``, as ``generate`` writes them."""
    identity = sample_identity(seed, pid)
    return [render_image(identity, sample_image_draw(seed, pid, camera, index), camera, height, width)
            for index in range(1, num_images + 1)]


SHEET_CAMERAS = (REGDB_VISIBLE, REGDB_THERMAL, SYSU_CAMERAS[3])  # the rows of example_sheet


def example_sheet(seed=0, num_ids=6, height=256, width=128):
    """uint8 [3 * height, num_ids * width, 3]: persons 1..num_ids in columns; rows
    RegDB visible, RegDB thermal, SYSU-MM01 near-infrared (camera 3)."""
    rows = []
    for camera in SHEET_CAMERAS:
        images = [render_identity_images(seed, pid, camera, 1, height, width)[0] for pid in range(1, num_ids + 1)]
        if camera.infrared:
            images = [np.repeat(image[..., None], 3, axis=-1) for image in images]
        rows.append(np.concatenate(images, axis=1))
    return np.concatenate(rows, axis=0)


# --- Dataset layouts ----------------------------------------------------------

def _regdb_plan(num_ids, images_per_id):
    """{pid: [(camera, [relative file paths])]} of a RegDB-layout dataset."""
    folders = (("Visible", "v", REGDB_VISIBLE), ("Thermal", "t", REGDB_THERMAL))
    return {pid: [(camera, [f"{folder}/{pid}/{letter}_{pid:05d}_{index:02d}.bmp"
                            for index in range(1, images_per_id + 1)]) for folder, letter, camera in folders]
            for pid in range(1, num_ids + 1)}


def _regdb_trial_split(seed, pids, trial):
    """Train and test ids of RegDB trial ``trial``: a random half each, disjoint."""
    order = _rng(seed, _STREAM_SPLIT, trial).permutation(pids)
    half = len(pids) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def _write_regdb_index(root, seed, plan):
    pids = np.array(sorted(plan))
    os.makedirs(os.path.join(root, "idx"))
    for trial in range(1, REGDB_TRIALS + 1):
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
    offset = _rng(seed, _STREAM_PRESENCE).random()
    return np.mod(offset + pids * _GOLDEN, 1.0) < _SYSU_INDOOR_SHARE


def _sysu_cameras(seed, pid, indoor):
    """{camera: number of images} of one id; at least one RGB and one IR camera."""
    rng = _rng(seed, pid, _STREAM_PRESENCE)
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
    rng = _rng(seed, _STREAM_SPLIT)
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
            rng = _rng(seed, pid, _STREAM_PAIRED, index)
            draw = _draw(rng)
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


def generate(out_dir, layout, num_ids, seed, height=256, width=128, *, images_per_id=REGDB_IMAGES_PER_ID,
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


def save_example_sheet(path, seed=0, num_ids=6, height=256, width=128):
    """Writes ``example_sheet`` as a PNG."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(example_sheet(seed, num_ids, height, width)).save(path, format="PNG", optimize=True)


def _define_flags():
    """The CLI's flags. Defined only when run as a script: the training entry point
    imports this module and owns flags of the same names (--seed, --height)."""
    flags.DEFINE_string("out", None, "Dataset folder to write.")
    flags.DEFINE_enum("layout", "regdb", LAYOUTS, "On-disk layout: RegDB or SYSU-MM01.")
    flags.DEFINE_integer("num_ids", 40, "Number of persons (pids 1..num_ids).")
    flags.DEFINE_integer("seed", 0, "Random seed; the same seed writes byte-identical files.")
    flags.DEFINE_integer("height", 256, "Image height in pixels.")
    flags.DEFINE_integer("width", 128, "Image width in pixels.")
    flags.DEFINE_integer("images_per_id", REGDB_IMAGES_PER_ID, "RegDB: images per person and modality.")
    flags.DEFINE_integer("test_ids", 0, "SYSU-MM01: test persons, pids 1..test_ids (0: ~20% of the ids).")
    flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Processes rendering persons in parallel.")
    flags.DEFINE_bool("overwrite", False, "Replace a dataset of this layout already in --out.")
    flags.DEFINE_string("sheet", None, "Also write a PNG of example persons (rows: RegDB visible, RegDB "
                        "thermal, SYSU-MM01 near-infrared).")


def main(argv):
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.out is None and FLAGS.sheet is None:
        raise app.UsageError("pass --out=DIR (a dataset) and/or --sheet=PATH (an example PNG)")
    try:
        if FLAGS.out is not None:
            generate(FLAGS.out, FLAGS.layout, FLAGS.num_ids, FLAGS.seed, FLAGS.height, FLAGS.width,
                     images_per_id=FLAGS.images_per_id, test_ids=FLAGS.test_ids, overwrite=FLAGS.overwrite,
                     num_workers=FLAGS.num_workers)
        if FLAGS.sheet is not None:
            save_example_sheet(FLAGS.sheet, FLAGS.seed, height=FLAGS.height, width=FLAGS.width)
    except (ValueError, FileExistsError) as error:
        raise app.UsageError(str(error))


def run():
    """Console-script entry point (``jsia-synthetic``)."""
    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
