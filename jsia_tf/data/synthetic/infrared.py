"""The infrared renderings: the two datasets have different IR cameras, rendered by two models.

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

Both read the identity's ``Infrared`` attributes and the shapes (``visible.render_maps``),
never a colour.
"""

import numpy as np

from jsia_tf.data.synthetic.persons import (
    BACKGROUND, FACE, SKIN, HAIR, UPPER, UPPER_PRINT, LOWER, SHOES, BAG, INNER, COLLAR, NUM_PARTS, span)
from jsia_tf.data.synthetic.visible import (
    FOLD_SHADING, REFERENCE_HEIGHT, RGB_RIM_DARKENING, blur_and_noise, clutter, to_uint8)

# --- Near-infrared: scene reflectance and illumination ---------------------
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
_IR_AMBIENT = {True: 0.32, False: 0.12}  # indoor, outdoor background temperature
_HOT_CLUTTER_PROB = 0.15  # lamps, radiators, engines: warm distractors in IR

# Rounded shapes cool towards their rims (grazing emission).
_IR_RIM_COOLING = 0.15


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
    temps[HAIR] = span(_HAIR_TEMPS, ir.warmth_hair) + 0.5 * heat
    temps[[UPPER, UPPER_PRINT]] = garment(identity.upper_thickness, ir.warmth_upper)
    temps[COLLAR] = temps[UPPER] + _COLLAR_WARMTH
    temps[INNER] = _INNER_TEMP + _INNER_WARMTH_SPAN * (ir.warmth_inner - 0.5) + 0.5 * heat
    temps[LOWER] = garment(identity.lower_thickness, ir.warmth_lower)
    temps[SHOES] = span(_SHOE_TEMPS, ir.warmth_shoes)
    temps[BAG] = span(_BAG_TEMPS, ir.warmth_bag)
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



def render_nir(identity, labels, rim, crease, camera, rng):
    """uint8 [H, W]: NIR reflectance of the scene and the person's parts under the
    camera's own illuminator (brightest at a hot spot, falling off outwards), sensor."""
    height, width = labels.shape
    # Walls, floor and clutter have their own reflectance; being farther from the
    # illuminator than the person, they stay dim.
    scene = np.empty((height, width), np.float32)
    horizon = int(height * rng.uniform(0.55, 0.8))
    scene[:horizon], scene[horizon:] = rng.uniform(*_NIR_SCENE, 2)
    clutter(rng, height, width, scene, lambda n: rng.uniform(*_NIR_SCENE, n))
    scene *= rng.uniform(*_NIR_SCENE_FALLOFF)
    person = labels != BACKGROUND
    shading = (1.0 - RGB_RIM_DARKENING * np.square(rim[person])) * (1.0 - FOLD_SHADING * np.abs(crease[person]))
    scene[person] = part_nir_reflectance(identity)[labels[person]] * shading
    # Illumination: a hot spot near the image centre, vignetting outwards, per-image gain.
    centre_y, centre_x = rng.uniform(-0.2, 0.2, 2)
    y = np.square(np.linspace(-1.0, 1.0, height, dtype=np.float32) - centre_y)[:, None]
    x = np.square(np.linspace(-1.0, 1.0, width, dtype=np.float32) - centre_x)[None, :]
    light = rng.uniform(*_NIR_GAIN) * (1.0 - 0.5 * rng.uniform(*_NIR_VIGNETTING) * (x + y))
    blur = rng.uniform(0.5, 1.1) * height / REFERENCE_HEIGHT
    return to_uint8(blur_and_noise(scene * light, rng, blur, rng.uniform(0.015, 0.035)))


def render_thermal(identity, labels, rim, crease, camera, rng):
    """uint8 [H, W]: temperatures of the scene and the person's parts, sensor."""
    height, width = labels.shape
    ambient = _IR_AMBIENT[camera.indoor] + rng.uniform(-0.05, 0.05)
    background = np.full((height, width), ambient, np.float32)
    background += np.linspace(-0.04, 0.04, height, dtype=np.float32)[:, None]  # the ground holds heat

    def temperatures(n):
        hot = rng.random(n) < _HOT_CLUTTER_PROB
        return np.where(hot, rng.uniform(0.6, 0.9, n), ambient + rng.uniform(-0.1, 0.12, n))

    clutter(rng, height, width, background, temperatures)
    person = part_temperatures(identity)[labels] + rng.uniform(-0.03, 0.03)  # warmer or colder day
    person += _FOLD_TEMP * crease
    person = ambient + (person - ambient) * (1.0 - _IR_RIM_COOLING * np.square(rim))
    temperature = np.where(labels == BACKGROUND, background, person)
    # Automatic gain control: the display range follows the scene, not absolute temperature.
    low, high = ambient - rng.uniform(0.05, 0.15), rng.uniform(0.95, 1.1)
    image = (temperature - low) / (high - low)
    # Thermal optics are softer than RGB ones.
    blur = rng.uniform(0.8, 1.6) * height / REFERENCE_HEIGHT
    image = blur_and_noise(image, rng, blur, rng.uniform(0.01, 0.025))
    image += rng.uniform(-0.02, 0.02, width).astype(np.float32)  # bolometer column offsets
    return to_uint8(image)
