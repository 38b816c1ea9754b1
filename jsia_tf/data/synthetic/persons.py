"""Persons of the synthetic dataset: identities (body, garments, colours, infrared
attributes) and the random draw of each image.

An identity is a fixed set of attributes drawn from ``(seed, pid)``: body
proportions, hair, garments (type, colour, print, sleeve and trouser length,
thickness, an open front showing an inner layer, a collar, folds) and a bag,
plus its infrared attributes (``Infrared``).

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
index)`` (``stream_rng``): adding identities leaves earlier ones byte-identical.
"""

import dataclasses

import numpy as np

# Part labels of the label map all modalities are rendered from.
BACKGROUND, FACE, SKIN, HAIR, UPPER, UPPER_PRINT, LOWER, SHOES, BAG, INNER, COLLAR = range(11)
NUM_PARTS = 11

# Independent random streams of one seed; camera streams are Camera.stream.
STREAM_IDENTITY = 0
STREAM_SPLIT = 1
STREAM_PRESENCE = 2
STREAM_PAIRED = 3

# --- Identity attribute tables ------------------------------------------------
CLOTHING_COLOURS = np.array([
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
NECK = 0.03
ANKLE = 0.035
UPPER_ARM, FOREARM = 0.19, 0.16
ARM_RADII = (0.026, 0.021, 0.017)  # shoulder, elbow, wrist; times the identity's build
LEG_RADII = (0.048, 0.034, 0.025)  # hip, knee, ankle
HAND_RADIUS = 0.02
ARM_SWING = np.radians(24.0)  # amplitude of the arm swing in a walking cycle
LEG_SWING = np.radians(22.0)
KNEE_BEND = np.radians(35.0)
SIDE_DEPTH = 0.32  # torso depth seen from the side, relative to its width

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



def stream_rng(seed, *stream):
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


def span(bounds, fraction):
    return float(bounds[0] + (bounds[1] - bounds[0]) * fraction)


def _sample_infrared(rng, colours):
    """The identity's IR attributes. Reads the colours here, at sampling time only:
    NIR reflectance rises with visible luminance, thermal warmth with darkness."""
    lum = {name: _luminance(getattr(colours, name)) for name in ("hair", "upper", "upper_print", "inner", "lower",
                                                                   "shoes", "bag")}
    nir = dict(
        nir_skin=span(_NIR_SKIN, rng.random()), nir_hair=span(_NIR_HAIR, _coupled(rng, lum["hair"])),
        nir_upper=span(_NIR_GARMENT, _coupled(rng, lum["upper"])),
        nir_print=span(_NIR_GARMENT, _coupled(rng, lum["upper_print"])),
        nir_inner=span(_NIR_GARMENT, _coupled(rng, lum["inner"])),
        nir_lower=span(_NIR_GARMENT, _coupled(rng, lum["lower"])),
        nir_shoes=span(_NIR_SHOES, _coupled(rng, lum["shoes"])),
        nir_bag=span(_NIR_GARMENT, _coupled(rng, lum["bag"])))
    warmth = dict(
        warmth_hair=float(rng.random()), warmth_upper=_coupled(rng, 1.0 - lum["upper"]),
        warmth_inner=_coupled(rng, 1.0 - lum["inner"]), warmth_lower=_coupled(rng, 1.0 - lum["lower"]),
        warmth_shoes=_coupled(rng, 1.0 - lum["shoes"]), warmth_bag=_coupled(rng, 1.0 - lum["bag"]))
    return Infrared(**nir, **warmth, body_heat=float(rng.uniform(-1.0, 1.0)))


def _sample_folds(rng, hip_height, lower_type, lower_cover):
    """0-2 folds on the upper garment (waist, elbows) and 0-2 on the lower one."""
    folds = [Fold("upper", float(rng.uniform(0.12, 0.32)), int(rng.choice((-1, 1))))
             for _ in range(rng.choice(3, p=(0.2, 0.45, 0.35)))]
    reach = lower_cover * (hip_height - ANKLE)  # what the lower garment covers below the hip
    if lower_type == "skirt":
        reach = max(0.0, reach - 0.05)
    if reach > 0.1:
        folds += [Fold("lower", float(rng.uniform(0.08, reach)), int(rng.choice((-1, 1))))
                  for _ in range(rng.choice(3, p=(0.2, 0.45, 0.35)))]
    return tuple(folds)


def sample_identity(seed, pid):
    """The fixed attributes of person ``pid``; depends on ``(seed, pid)`` only."""
    rng = stream_rng(seed, pid, STREAM_IDENTITY)
    upper_type = UPPER_TYPES[rng.integers(3)]
    lower_type = LOWER_TYPES[rng.choice(3, p=(0.6, 0.2, 0.2))]
    # Jackets and coats have long sleeves; shirts are sleeveless, short or long.
    sleeve = 1.0 if upper_type != "shirt" else (0.0, rng.uniform(0.3, 0.45), rng.uniform(0.9, 1.0))[
        rng.choice(3, p=(0.15, 0.45, 0.4))]
    colours = Colours(
        skin=_pick(rng, _SKIN_TONES), hair=_pick(rng, _HAIR_COLOURS), upper=_pick(rng, CLOTHING_COLOURS),
        upper_print=_pick(rng, CLOTHING_COLOURS), inner=_pick(rng, CLOTHING_COLOURS),
        lower=_pick(rng, CLOTHING_COLOURS), shoes=_pick(rng, _SHOE_COLOURS), bag=_pick(rng, CLOTHING_COLOURS))
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
    return image_draw(stream_rng(seed, pid, camera.stream, index))


def image_draw(rng):
    return ImageDraw(
        view=VIEWS[rng.choice(3, p=_VIEW_PROBS)], facing=int(rng.choice((-1, 1))),
        phase=rng.uniform(0.0, 2.0 * np.pi), dx=rng.uniform(-0.07, 0.07), dy=rng.uniform(-0.03, 0.02),
        scale=rng.uniform(0.92, 1.04), scene_seed=int(rng.integers(2**32)))
