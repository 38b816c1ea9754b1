"""The shapes every modality is rendered from, and the visible (RGB) rendering.

A person is painted back to front as a part-label map (``render_maps``); RGB
colours the parts, the IR renderers (``infrared.py``) read the same maps.
"""

import dataclasses

import numpy as np
from scipy import ndimage

from jsia_tf.data.synthetic.persons import (
    BACKGROUND, FACE, SKIN, HAIR, UPPER, UPPER_PRINT, LOWER, SHOES, BAG, INNER, COLLAR, NUM_PARTS, ANKLE, ARM_RADII,
    ARM_SWING, CLOTHING_COLOURS, FOREARM, HAND_RADIUS, KNEE_BEND, LEG_RADII, LEG_SWING, NECK, SIDE_DEPTH, UPPER_ARM)

FOLD_SHADING = 0.15  # in RGB and NIR a fold is a shadow
_FOLD_HALF_WIDTH = 0.012  # body heights

# Blur sigmas are drawn for images of this height and scaled to the requested one.
REFERENCE_HEIGHT = 256

# Rounded shapes darken towards their rims.
RGB_RIM_DARKENING = 0.35


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
    thigh = shin = (hip[1] - ANKLE) / 2.0
    if side_view:
        swing = LEG_SWING * np.sin(phase)
        shin_angle = swing - KNEE_BEND * max(0.0, np.cos(phase))
        knee = (hip[0] + facing * thigh * np.sin(swing), hip[1] - thigh * np.cos(swing))
        return hip, knee, (knee[0] + facing * shin * np.sin(shin_angle), knee[1] - shin * np.cos(shin_angle))
    lift = 0.04 * max(0.0, np.sin(phase))
    return hip, (hip[0], hip[1] - thigh + lift / 2.0), (hip[0] * 0.9, ANKLE + lift)


def _arm_joints(shoulder, phase, facing, side_view, outward):
    """Shoulder, elbow, wrist of one arm, swinging against the leg of its side."""
    swing = ARM_SWING * np.sin(phase + np.pi)
    if side_view:
        fore = swing + np.radians(20.0)  # the forearm bends forward
        elbow = (shoulder[0] + facing * UPPER_ARM * np.sin(swing), shoulder[1] - UPPER_ARM * np.cos(swing))
        return shoulder, elbow, (elbow[0] + facing * FOREARM * np.sin(fore), elbow[1] - FOREARM * np.cos(fore))
    shorten = np.cos(swing)  # seen from the front, a swinging arm looks shorter
    elbow = (shoulder[0] + outward * 0.012, shoulder[1] - UPPER_ARM * shorten)
    return shoulder, elbow, (elbow[0] - outward * 0.004, elbow[1] - FOREARM * shorten)


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
    depth = SIDE_DEPTH if side_view else 0.5
    shoulder_half = ident.shoulder_width * ident.build * depth
    hip_half = ident.hip_width * ident.build * depth
    arm_radii = tuple(r * ident.build for r in ARM_RADII)
    leg_radii = tuple(r * ident.build for r in LEG_RADII)
    sides_phases = ((-1, draw.phase), (1, draw.phase + np.pi))
    hip_u = 0.0 if side_view else hip_half - leg_radii[0]
    legs = [_leg_joints((side * hip_u, ident.hip_height), phase, facing, side_view) for side, phase in sides_phases]
    bob = min(leg[2][1] for leg in legs) - ANKLE  # a stride lowers the hips; a foot stays on the ground
    legs = tuple(tuple((u, v - bob) for u, v in leg) for leg in legs)
    head_v = 1.0 - ident.head_radius - bob
    shoulder_v = head_v - ident.head_radius - NECK
    shoulder_u = 0.0 if side_view else shoulder_half - arm_radii[0]
    arms = tuple(_arm_joints((side * shoulder_u, shoulder_v - 0.015), phase, facing, side_view, side)
                 for side, phase in sides_phases)
    return _Pose(facing=facing, bag_side=_bag_image_side(ident, draw.view, facing), head_v=head_v,
                 shoulder_v=shoulder_v, hip_v=ident.hip_height - bob, shoulder_half=shoulder_half,
                 hip_half=hip_half, arms=arms, legs=legs, arm_radii=arm_radii, leg_radii=leg_radii)


def _paint_arm(canvas, ident, pose, arm):
    joints = pose.arms[arm]
    _limb(canvas, joints, pose.arm_radii, ident.sleeve_cover, UPPER, 1.15 + 0.35 * ident.upper_thickness)
    canvas.ellipse(joints[2], (HAND_RADIUS, 1.2 * HAND_RADIUS), SKIN)


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
        hem = hip_v - ident.lower_cover * (hip_v - ANKLE)
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



def _part_colours(identity):
    """[NUM_PARTS, 3] RGB colour of each part (BACKGROUND's is unused)."""
    c = identity.colours
    colours = np.zeros((NUM_PARTS, 3), np.float32)
    for label, colour in ((FACE, c.skin), (SKIN, c.skin), (HAIR, c.hair), (UPPER, c.upper),
                          (UPPER_PRINT, c.upper_print), (LOWER, c.lower), (SHOES, c.shoes), (BAG, c.bag),
                          (INNER, c.inner), (COLLAR, c.upper)):
        colours[label] = colour
    return colours


def clutter(rng, height, width, image, values):
    """Paints 3-7 random rectangles (shelves, doors, poles, cars) with ``values(n)``."""
    count = rng.integers(3, 8)
    y0 = rng.integers(0, height, count)
    x0 = rng.integers(-width // 4, width, count)
    h = rng.integers(height // 16, height // 2, count)
    w = np.where(rng.random(count) < 0.3, rng.integers(2, max(width // 16, 3), count),
                 rng.integers(width // 8, width // 2, count))  # some thin poles
    for i, value in enumerate(values(count)):
        image[y0[i]:y0[i] + h[i], max(x0[i], 0):max(x0[i] + w[i], 0)] = value


def blur_and_noise(image, rng, blur, noise):
    """Optical blur, then sensor noise; sigmas in pixels / intensity units."""
    sigma = (blur, blur) + (0,) * (image.ndim - 2)
    image = ndimage.gaussian_filter(image, sigma, truncate=2.5)
    # Uniform noise of standard deviation `noise`: 4x cheaper to draw than Gaussian.
    image += (rng.random(image.shape, dtype=np.float32) - 0.5) * (noise * np.sqrt(12.0))
    return image


def to_uint8(image):
    return np.clip(image * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def render_rgb(identity, labels, rim, crease, camera, rng):
    """uint8 [H, W, 3]: the camera's scene, the person's colours, light and sensor."""
    height, width = labels.shape
    # The camera's own wall and floor, lit a little differently in every image.
    image = np.empty((height, width, 3), np.float32)
    horizon = int(height * rng.uniform(0.55, 0.8))
    image[:horizon] = np.asarray(camera.wall) * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)
    image[horizon:] = np.asarray(camera.floor) * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)

    def clutter_colours(n):
        mix = rng.uniform(0.2, 0.7, (n, 1))
        other = CLOTHING_COLOURS[rng.integers(len(CLOTHING_COLOURS), size=n)]
        return (1.0 - mix) * np.asarray(camera.wall) + mix * other

    clutter(rng, height, width, image, clutter_colours)
    person = labels != BACKGROUND
    shading = (1.0 - RGB_RIM_DARKENING * np.square(rim[person])) * (1.0 - FOLD_SHADING * np.abs(crease[person]))
    image[person] = _part_colours(identity)[labels[person]] * shading[:, None]
    # Light from above, camera white balance and exposure.
    light = np.linspace(1.1, 0.85, height, dtype=np.float32)[:, None, None]
    image *= light * (rng.uniform(*camera.exposure) * np.asarray(camera.white_balance, np.float32))
    blur = rng.uniform(0.3, 0.8) * height / REFERENCE_HEIGHT
    noise = rng.uniform(0.015, 0.035) if camera.indoor else rng.uniform(0.008, 0.02)  # dim rooms are noisier
    return to_uint8(blur_and_noise(image, rng, blur, noise))
