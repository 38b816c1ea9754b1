"""Tests of the synthetic RGB-IR pedestrian generator (jsia_tf/data/synthetic/)."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage

from jsia_tf import config
from jsia_tf.data import pipeline
from jsia_tf.data import records
from jsia_tf.data import synthetic
from jsia_tf.data.synthetic import layouts

H, W = 32, 16  # tiny images: layout and determinism tests
PARTS_H, PARTS_W = 128, 64  # big enough for every part to cover pixels
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _draw(view, facing=1, phase=0.7, scene_seed=3):
    return synthetic.ImageDraw(view=view, facing=facing, phase=phase, dx=0.0, dy=0.0, scale=1.0,
                               scene_seed=scene_seed)


def _first_identity(seed, **wanted):
    """The first sampled identity with the wanted attributes (the attributes are data, not code)."""
    for pid in range(1, 500):
        identity = synthetic.sample_identity(seed, pid)
        if all(getattr(identity, key) == value for key, value in wanted.items()):
            return identity
    raise AssertionError(f"no identity with {wanted}")


def _with_ir(identity, **values):
    """``identity`` with some of its ``Infrared`` attributes replaced."""
    return dataclasses.replace(identity, infrared=dataclasses.replace(identity.infrared, **values))


def _luminance(colour):
    return float(np.dot((0.2126, 0.7152, 0.0722), colour))


NIR_CAMERA, THERMAL_CAMERA = synthetic.SYSU_CAMERAS[3], synthetic.REGDB_THERMAL
IR_CAMERAS = pytest.mark.parametrize("camera", [NIR_CAMERA, THERMAL_CAMERA], ids=["nir", "thermal"])


def _read_tree(root):
    """{relative path: bytes} of every file under ``root``."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


# --- The modalities -------------------------------------------------------------

def test_cameras_have_the_real_datasets_ir_kinds():
    """SYSU-MM01's IR cameras are near-infrared, RegDB's is thermal; the others are RGB."""
    assert synthetic.REGDB_THERMAL.infrared == synthetic.THERMAL
    assert synthetic.REGDB_VISIBLE.infrared is None
    assert {cam: camera.infrared for cam, camera in synthetic.SYSU_CAMERAS.items()} == {
        1: None, 2: None, 3: synthetic.NIR, 4: None, 5: None, 6: synthetic.NIR}
    assert {cam for cam, camera in synthetic.SYSU_CAMERAS.items() if camera.infrared} == set(records.SYSU_IR_CAMS)


@pytest.mark.parametrize("view", synthetic.VIEWS)
def test_ir_is_blind_to_colour_rgb_is_not(view):
    """The paper's premise: IR -> RGB is one-to-many. Same draw, colours swapped:
    both IR renderings (thermal and near-infrared) are byte-identical."""
    person = _first_identity(0, upper_print="stripes", open_front=True)
    recoloured = dataclasses.replace(person, colours=synthetic.sample_identity(1, 1).colours)
    assert recoloured.colours != person.colours
    draw = _draw(view)
    cameras = (synthetic.REGDB_THERMAL, synthetic.SYSU_CAMERAS[3], synthetic.SYSU_CAMERAS[6])
    assert {camera.infrared for camera in cameras} == {synthetic.THERMAL, synthetic.NIR}
    for camera in cameras:
        ir = synthetic.render_image(person, draw, camera, PARTS_H, PARTS_W)
        assert ir.shape == (PARTS_H, PARTS_W) and ir.std() > 10  # a picture, not a blank
        np.testing.assert_array_equal(ir, synthetic.render_image(recoloured, draw, camera, PARTS_H, PARTS_W))
    for camera in (synthetic.REGDB_VISIBLE, synthetic.SYSU_CAMERAS[1]):
        rgb = synthetic.render_image(person, draw, camera, PARTS_H, PARTS_W)
        rgb_recoloured = synthetic.render_image(recoloured, draw, camera, PARTS_H, PARTS_W)
        assert rgb.shape == (PARTS_H, PARTS_W, 3)
        assert np.mean(rgb != rgb_recoloured) > 0.1


def test_ir_sees_what_colour_does_not_show():
    """Thermal: garment thickness (not a colour) changes IR, thin garments are warmer.
    NIR: the garment's reflectance (an IR attribute, not a colour) sets its brightness."""
    person = dataclasses.replace(_first_identity(0, upper_type="shirt", upper_print="solid"), folds=())
    draw = _draw("front")
    labels, _ = synthetic.render_parts(person, draw, PARTS_H, PARTS_W)
    upper = labels == synthetic.UPPER
    thin = synthetic.render_image(dataclasses.replace(person, upper_thickness=0.0), draw,
                                  synthetic.REGDB_THERMAL, PARTS_H, PARTS_W)
    thick = synthetic.render_image(dataclasses.replace(person, upper_thickness=1.0), draw,
                                   synthetic.REGDB_THERMAL, PARTS_H, PARTS_W)
    assert thin[upper].mean() > thick[upper].mean() + 20
    dark = synthetic.render_image(_with_ir(person, nir_upper=0.1), draw, NIR_CAMERA, PARTS_H, PARTS_W)
    bright = synthetic.render_image(_with_ir(person, nir_upper=0.9), draw, NIR_CAMERA, PARTS_H, PARTS_W)
    assert bright[upper].mean() > dark[upper].mean() + 80
    np.testing.assert_array_equal(bright[~upper & (labels != synthetic.BACKGROUND)][:50],
                                  dark[~upper & (labels != synthetic.BACKGROUND)][:50])  # other parts as they were


def test_temperatures_follow_material():
    """For every identity: skin warm, garments cooler, bags coldest; an open coat's
    inner layer and a collar warmer than the coat; a print has no temperature."""
    for pid in range(1, 201):
        person = synthetic.sample_identity(0, pid)
        temps = synthetic.part_temperatures(person)
        assert temps[synthetic.FACE] > temps[synthetic.SKIN] > temps[synthetic.LOWER] > temps[synthetic.BAG]
        assert temps[synthetic.SKIN] > temps[synthetic.UPPER] > temps[synthetic.BAG]
        assert temps[synthetic.SKIN] > temps[synthetic.INNER] and temps[synthetic.COLLAR] > temps[synthetic.UPPER]
        assert temps[synthetic.UPPER] == temps[synthetic.UPPER_PRINT]  # ink has no temperature
        if person.upper_type == "coat":
            assert temps[synthetic.INNER] > temps[synthetic.UPPER]
    # Rendered: the face is brighter than the background in every view that shows it.
    person = _first_identity(0, upper_type="coat")
    for view in ("front", "side"):
        labels, _ = synthetic.render_parts(person, _draw(view), PARTS_H, PARTS_W)
        ir = synthetic.render_image(person, _draw(view), synthetic.REGDB_THERMAL, PARTS_H, PARTS_W)
        assert ir[labels == synthetic.FACE].mean() > ir[labels == synthetic.BACKGROUND].mean() + 60


def test_nir_skin_is_bright_and_background_dim():
    """Active NIR illumination: skin bright whatever its visible tone, the scene dim."""
    for pid in range(1, 11):
        person = synthetic.sample_identity(0, pid)
        labels, _ = synthetic.render_parts(person, _draw("front", scene_seed=pid), PARTS_H, PARTS_W)
        nir = synthetic.render_image(person, _draw("front", scene_seed=pid), NIR_CAMERA, PARTS_H, PARTS_W)
        face, background = nir[labels == synthetic.FACE].mean(), nir[labels == synthetic.BACKGROUND].mean()
        assert face > 100 and background < 75 and face > background + 60, (pid, face, background)


def test_prints_show_in_nir_not_in_thermal():
    """A print has its own NIR reflectance; in thermal it is invisible (ink has no temperature)."""
    person = dataclasses.replace(_first_identity(0, upper_print="stripes", upper_type="jacket", open_front=False),
                                 folds=())
    person = _with_ir(person, nir_upper=0.2, nir_print=0.8)
    draw = _draw("front")
    labels, rim = synthetic.render_parts(person, draw, PARTS_H, PARTS_W)
    upper, stripes = (labels == synthetic.UPPER) & (rim < 0.7), (labels == synthetic.UPPER_PRINT) & (rim < 0.7)
    assert upper.sum() > 50 and stripes.sum() > 50
    nir = synthetic.render_image(person, draw, NIR_CAMERA, PARTS_H, PARTS_W).astype(float)
    thermal = synthetic.render_image(person, draw, THERMAL_CAMERA, PARTS_H, PARTS_W).astype(float)
    assert nir[stripes].mean() > nir[upper].mean() + 50
    assert abs(thermal[stripes].mean() - thermal[upper].mean()) < 4


def test_layers_and_folds_show_in_thermal():
    """An open coat shows its warmer inner layer from the front only; a fold is a
    warmer (pressed) or cooler (air pocket) band at the identity's own place on the
    garment, in every view, and a shadow in RGB."""
    person = dataclasses.replace(_first_identity(0, upper_type="coat", open_front=True, upper_print="solid"),
                                 folds=())
    front = _draw("front")
    labels, _ = synthetic.render_parts(person, front, PARTS_H, PARTS_W)
    assert np.sum(labels == synthetic.INNER) > 30
    for view in ("back", "side"):
        assert not np.any(synthetic.render_parts(person, _draw(view), PARTS_H, PARTS_W)[0] == synthetic.INNER)
    thermal = synthetic.render_image(person, front, THERMAL_CAMERA, PARTS_H, PARTS_W).astype(float)
    assert thermal[labels == synthetic.INNER].mean() > thermal[labels == synthetic.UPPER].mean() + 25
    # Folds: one warmer on the coat, one cooler on the trousers.
    folded = dataclasses.replace(person, folds=(synthetic.Fold("upper", 0.2, 1), synthetic.Fold("lower", 0.2, -1)))
    for view in synthetic.VIEWS:
        draw = _draw(view)
        labels, _, crease = synthetic.render_maps(folded, draw, PARTS_H, PARTS_W)
        assert np.all(crease[labels == synthetic.BACKGROUND] == 0)
        warm, cool = crease > 0.5, crease < -0.5
        assert np.all(np.isin(labels[warm], (synthetic.UPPER, synthetic.INNER)))
        assert np.all(labels[cool] == synthetic.LOWER) and warm.sum() > 5 and cool.sum() > 5
        plain = synthetic.render_image(person, draw, THERMAL_CAMERA, PARTS_H, PARTS_W).astype(float)
        with_folds = synthetic.render_image(folded, draw, THERMAL_CAMERA, PARTS_H, PARTS_W).astype(float)
        assert (with_folds - plain)[warm].mean() > 5 and (with_folds - plain)[cool].mean() < -5
        rgb_plain = synthetic.render_image(person, draw, synthetic.REGDB_VISIBLE, PARTS_H, PARTS_W).astype(float)
        rgb_folds = synthetic.render_image(folded, draw, synthetic.REGDB_VISIBLE, PARTS_H, PARTS_W).astype(float)
        assert (rgb_folds - rgb_plain)[warm | cool].mean() < -1 and (rgb_folds - rgb_plain)[warm | cool].max() <= 1


def _part_means(identity, camera, draw, parts):
    """Mean IR value of each part's pixels off rims and folds; NaN where too few."""
    labels, rim, crease = synthetic.render_maps(identity, draw, PARTS_H, PARTS_W)
    image = synthetic.render_image(identity, draw, camera, PARTS_H, PARTS_W).astype(float)
    means = []
    for part in parts:
        pixels = (labels == part) & (rim < 0.6) & (crease == 0)
        means.append(image[pixels].mean() if pixels.sum() >= 15 else np.nan)
    return np.array(means)


@IR_CAMERAS
def test_ir_part_values_agree_across_views_and_vary_across_identities(camera):
    """An identity's garments have the same IR value in every view (same scene, so
    the same gain) up to noise; across identities they differ."""
    parts = (synthetic.UPPER, synthetic.LOWER)
    per_identity = []
    for pid in range(1, 31):
        person = synthetic.sample_identity(0, pid)
        views = np.array([_part_means(person, camera, _draw(view, phase=phase, scene_seed=pid), parts)
                          for view, phase in (("front", 0.3), ("back", 2.0), ("side", 4.0))])
        seen = ~np.isnan(views).any(axis=0)  # e.g. shorts under a coat: no trousers to see
        assert np.all(np.ptp(views[:, seen], axis=0) < 12), (pid, views)
        per_identity.append(np.where(seen, views.mean(axis=0), np.nan))
    across = np.nanstd(np.array(per_identity), axis=0)
    assert np.all(across > 15), across


def test_ir_attributes_vary_across_identities():
    people = [synthetic.sample_identity(0, pid) for pid in range(1, 201)]
    for name in ("nir_upper", "nir_print", "nir_inner", "nir_lower", "nir_bag"):
        values = np.array([getattr(person.infrared, name) for person in people])
        assert values.std() > 0.15 and values.min() < 0.25 and values.max() > 0.75, name
    for name in ("warmth_upper", "warmth_inner", "warmth_lower", "warmth_bag"):
        assert np.std([getattr(person.infrared, name) for person in people]) > 0.15, name
    assert np.std([synthetic.part_temperatures(person)[synthetic.UPPER] for person in people]) > 0.08
    assert np.std([person.infrared.body_heat for person in people]) > 0.4
    assert np.mean([len(person.folds) > 0 for person in people]) > 0.6
    assert 0.2 < np.mean([person.open_front for person in people]) < 0.5
    assert 0.25 < np.mean([person.collar for person in people]) < 0.6


def test_ir_attributes_partly_follow_visible_brightness():
    """Coupled, not determined: NIR reflectance rises with visible luminance, thermal
    warmth with darkness, both with a correlation between 0.2 and 0.8."""
    assert synthetic.IR_VISIBLE_COUPLING == pytest.approx(0.4)
    people = [synthetic.sample_identity(0, pid) for pid in range(1, 501)]
    for part, key in (("upper", "upper"), ("upper_print", "print"), ("inner", "inner"), ("lower", "lower"),
                      ("bag", "bag")):
        luminance = np.array([_luminance(getattr(person.colours, part)) for person in people])
        nir = np.array([getattr(person.infrared, f"nir_{key}") for person in people])
        assert 0.2 < np.corrcoef(luminance, nir)[0, 1] < 0.8, part
        if key != "print":
            warmth = np.array([getattr(person.infrared, f"warmth_{key}") for person in people])
            assert 0.2 < np.corrcoef(1.0 - luminance, warmth)[0, 1] < 0.8, part
    # Rendered: the upper garment's NIR brightness follows its RGB brightness, partly.
    rgb, nir = [], []
    for pid, person in enumerate(people[:120], start=1):
        draw = _draw("front", scene_seed=pid)
        labels, rim, crease = synthetic.render_maps(person, draw, PARTS_H, PARTS_W)
        pixels = (labels == synthetic.UPPER) & (rim < 0.6) & (crease == 0)
        rgb_image = synthetic.render_image(person, draw, synthetic.REGDB_VISIBLE, PARTS_H, PARTS_W)
        rgb.append(_luminance(rgb_image[pixels].mean(axis=0)))
        nir.append(synthetic.render_image(person, draw, NIR_CAMERA, PARTS_H, PARTS_W)[pixels].mean())
    assert 0.2 < np.corrcoef(rgb, nir)[0, 1] < 0.8


def test_views_show_different_parts():
    """Back view: no face, backpack as a box; front view: straps only, logo on the chest."""
    person = _first_identity(0, bag="backpack", upper_print="logo", hair_length="short")
    parts = {view: synthetic.render_parts(person, _draw(view), PARTS_H, PARTS_W)[0] for view in synthetic.VIEWS}
    assert not np.any(parts["back"] == synthetic.FACE)
    assert np.any(parts["front"] == synthetic.FACE) and np.any(parts["side"] == synthetic.FACE)
    straps, box = np.sum(parts["front"] == synthetic.BAG), np.sum(parts["back"] == synthetic.BAG)
    assert 0 < straps < box / 2
    assert np.any(parts["front"] == synthetic.UPPER_PRINT)
    assert not np.any(parts["back"] == synthetic.UPPER_PRINT)


@pytest.mark.parametrize("bag_side", [-1, 1])
def test_handbag_changes_side_and_hides_with_the_view(bag_side):
    person = dataclasses.replace(_first_identity(0, bag="handbag"), bag_side=bag_side)

    def bag_columns(view, facing=1):
        labels, _ = synthetic.render_parts(person, _draw(view, facing), PARTS_H, PARTS_W)
        return np.nonzero(labels == synthetic.BAG)[1] + 0.5 - PARTS_W / 2  # relative to the body centre

    # The person's right is on the image left from the front, on the image right from the back.
    assert np.all(np.sign(bag_columns("front")) == -bag_side)
    assert np.all(np.sign(bag_columns("back")) == bag_side)
    # Walking to the image right the person's left side faces the camera; a bag on
    # the far side is hidden behind the body, at most a corner shows.
    near_facing = -bag_side
    assert bag_columns("side", -near_facing).size < bag_columns("side", near_facing).size / 4


def test_rgb_and_ir_images_are_unpaired():
    """Image k of a person in each modality comes from independent draws."""
    seed, pid = 0, 4
    person = synthetic.sample_identity(seed, pid)
    rgb_draws = [synthetic.sample_image_draw(seed, pid, synthetic.REGDB_VISIBLE, k) for k in range(1, 11)]
    ir_draws = [synthetic.sample_image_draw(seed, pid, synthetic.REGDB_THERMAL, k) for k in range(1, 11)]
    for rgb_draw, ir_draw in zip(rgb_draws, ir_draws):
        assert rgb_draw.phase != ir_draw.phase and rgb_draw.scene_seed != ir_draw.scene_seed
        rgb_parts, _ = synthetic.render_parts(person, rgb_draw, PARTS_H, PARTS_W)
        ir_parts, _ = synthetic.render_parts(person, ir_draw, PARTS_H, PARTS_W)
        assert np.mean(rgb_parts != ir_parts) > 0.01
    assert [d.view for d in rgb_draws] != [d.view for d in ir_draws]
    # Within a modality the draws vary too: several views over 10 images.
    assert len({d.view for d in rgb_draws}) > 1


def _edges(gray):
    """Gradient magnitude of a lightly smoothed gray image."""
    smooth = ndimage.gaussian_filter(gray.astype(float), 1.0)
    return np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))


@pytest.mark.parametrize("layout", ["sysu", "regdb"])
def test_true_pairs_of_the_test_persons_beside_the_dataset(tmp_path, layout):
    """PAIRED_FILE: per person, PAIRS_PER_ID frames each seen by one of its RGB and one of its
    IR cameras (sysu: the test persons; regdb: every person, each trial testing another
    half). A pair is one draw: both images show the person in the same place and pose.
    The frames are new draws (no dataset image), and no reader of the layout lists the
    file, so training never reads it."""
    synthetic.generate(tmp_path, layout, 8, seed=1, height=PARTS_H, width=PARTS_W, images_per_id=2)
    pairs = synthetic.read_paired_test(tmp_path)
    dataset = pipeline.load_dataset(layout, tmp_path)
    test_ids = _sysu_splits(tmp_path)["test"] if layout == "sysu" else list(range(1, 9))
    assert pairs["pids"].tolist() == [pid for pid in test_ids for _ in range(synthetic.PAIRS_PER_ID)]
    assert pairs["rgb"].shape == (len(pairs["pids"]), PARTS_H, PARTS_W, 3) and pairs["rgb"].dtype == np.uint8
    assert pairs["ir"].shape == (len(pairs["pids"]), PARTS_H, PARTS_W)
    assert pairs["person"].shape == pairs["ir"].shape and pairs["person"].dtype == bool
    assert 0.05 < pairs["person"].mean() < 0.6  # a standing person in the frame
    every = {path for split in (dataset.train_rgb, dataset.train_ir, dataset.test) for path in split.paths}
    assert all(synthetic.PAIRED_FILE not in path for path in every)
    for i, pid in enumerate(pairs["pids"]):
        # Each image from a camera the person appears in, of its modality.
        person_cams = set(dataset.test.cams[dataset.test.pids == pid])
        if layout == "sysu":
            assert pairs["rgb_cams"][i] in person_cams & set(records.SYSU_RGB_CAMS)
            assert pairs["ir_cams"][i] in person_cams & set(records.SYSU_IR_CAMS)
    # Same frame: the edges of a pair's two images (the person's outline and parts; the
    # backgrounds are each camera's own) coincide far better than those of other frames.
    edges = {m: [_edges(image if m == "ir" else image.mean(-1)) for image in pairs[m]] for m in ("rgb", "ir")}
    correlation = np.corrcoef(np.stack([e.ravel() for e in edges["rgb"] + edges["ir"]]))
    n = len(pairs["pids"])
    cross = correlation[:n, n:]  # [RGB image i, IR image j]
    assert np.mean(np.diag(cross)) > np.mean(cross[~np.eye(n, dtype=bool)]) + 0.1
    # New draws: no dataset image of the person is one of its pair images.
    files = [path for path in every if f"/{pairs['pids'][0]:04d}/" in path or f"/{pairs['pids'][0]}/" in path]
    first = pairs["rgb"][0].astype(float)
    assert all(np.abs(np.asarray(Image.open(path).convert("RGB"), float) - first).mean() > 5 for path in files
               if np.asarray(Image.open(path)).ndim == 3 and "cam3" not in path and "cam6" not in path)
    assert synthetic.read_paired_test(tmp_path / "nowhere") is None


def test_identities_differ_and_are_seeded():
    assert synthetic.sample_identity(0, 1) == synthetic.sample_identity(0, 1)
    assert synthetic.sample_identity(0, 1) != synthetic.sample_identity(1, 1)
    assert synthetic.sample_identity(0, 1) != synthetic.sample_identity(0, 2)


def test_example_sheet_rgb_over_thermal_over_nir():
    sheet = synthetic.example_sheet(seed=0, num_ids=3, height=H, width=W)
    assert sheet.shape == (3 * H, 3 * W, 3) and sheet.dtype == np.uint8
    ir_rows = sheet[H:]
    np.testing.assert_array_equal(ir_rows[..., 0], ir_rows[..., 1])
    np.testing.assert_array_equal(ir_rows[..., 0], ir_rows[..., 2])
    assert np.any(sheet[:H, ..., 0] != sheet[:H, ..., 2])  # the RGB row has colour
    np.testing.assert_array_equal(
        sheet[H:2 * H, W:2 * W, 0], synthetic.render_identity_images(0, 2, synthetic.REGDB_THERMAL, 1, H, W)[0])
    np.testing.assert_array_equal(
        sheet[2 * H:, W:2 * W, 0], synthetic.render_identity_images(0, 2, synthetic.SYSU_CAMERAS[3], 1, H, W)[0])


# --- RegDB layout ------------------------------------------------------------------

def test_regdb_layout_and_index(tmp_path):
    num_ids, images = 5, 3
    synthetic.generate(tmp_path, "regdb", num_ids, seed=0, height=H, width=W, images_per_id=images)
    assert sorted(os.listdir(tmp_path)) == ["Thermal", "Visible", "idx", "paired_test.npz", "synthetic.json"]
    for folder in ("Visible", "Thermal"):
        assert sorted(os.listdir(tmp_path / folder), key=int) == [str(pid) for pid in range(1, num_ids + 1)]
    # The files are exactly the rendered images: BMP is lossless; thermal is 8-bit gray.
    visible = Image.open(tmp_path / "Visible" / "2" / "v_00002_03.bmp")
    thermal = Image.open(tmp_path / "Thermal" / "2" / "t_00002_01.bmp")
    assert (visible.mode, visible.size, thermal.mode) == ("RGB", (W, H), "L")
    np.testing.assert_array_equal(
        np.asarray(visible), synthetic.render_identity_images(0, 2, synthetic.REGDB_VISIBLE, 3, H, W)[2])
    np.testing.assert_array_equal(
        np.asarray(thermal), synthetic.render_identity_images(0, 2, synthetic.REGDB_THERMAL, 1, H, W)[0])

    splits = set()
    for trial in config.REGDB_TRIALS:
        ids = {}
        for split in ("train", "test"):
            for modality, folder in (("visible", "Visible"), ("thermal", "Thermal")):
                lines = (tmp_path / "idx" / f"{split}_{modality}_{trial}.txt").read_text().splitlines()
                pids = set()
                for line in lines:
                    path, label = line.split(" ")
                    assert path.startswith(f"{folder}/{label}/") and (tmp_path / path).is_file()
                    pids.add(int(label))
                assert len(lines) == images * len(pids)
                ids.setdefault(split, pids)
                assert ids[split] == pids  # both modalities hold the same ids
        assert len(ids["train"]) == num_ids // 2
        assert ids["train"].isdisjoint(ids["test"]) and ids["train"] | ids["test"] == set(range(1, num_ids + 1))
        splits.add(frozenset(ids["train"]))
    assert len(splits) > 1  # every trial draws its own split


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    kwargs = dict(height=H, width=W, images_per_id=2)
    synthetic.generate(tmp_path / "a", "regdb", 3, seed=5, **kwargs)
    synthetic.generate(tmp_path / "b", "regdb", 3, seed=5, **kwargs)
    synthetic.generate(tmp_path / "c", "regdb", 3, seed=6, **kwargs)
    a, b, c = (_read_tree(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    images = [path for path in a if path.endswith(".bmp")]
    assert all(a[path] != c[path] for path in images)


def test_adding_ids_keeps_earlier_ones(tmp_path):
    synthetic.generate(tmp_path / "small", "sysu", 5, seed=2, height=H, width=W)
    synthetic.generate(tmp_path / "large", "sysu", 7, seed=2, height=H, width=W)
    small, large = _read_tree(tmp_path / "small"), _read_tree(tmp_path / "large")
    images = [path for path in small if path.endswith(".jpg")]
    assert images and all(large[path] == small[path] for path in images)


def test_workers_write_the_same_bytes(tmp_path):
    synthetic.generate(tmp_path / "one", "regdb", 4, seed=1, height=H, width=W, images_per_id=2)
    synthetic.generate(tmp_path / "two", "regdb", 4, seed=1, height=H, width=W, images_per_id=2, num_workers=2)
    assert _read_tree(tmp_path / "one") == _read_tree(tmp_path / "two")


# --- SYSU-MM01 layout --------------------------------------------------------------

def _sysu_splits(root):
    """{train, val, test: ids} of a SYSU-layout dataset; each index file is one line."""
    splits = {}
    for name in ("train", "val", "test"):
        lines = (root / "exp" / f"{name}_id.txt").read_text().splitlines()
        assert len(lines) == 1
        splits[name] = [int(pid) for pid in lines[0].split(",")]
    return splits


def test_sysu_layout_and_splits(tmp_path):
    num_ids = 10
    synthetic.generate(tmp_path, "sysu", num_ids, seed=0, height=H, width=W)
    assert sorted(os.listdir(tmp_path)) == [f"cam{cam}" for cam in range(1, 7)] + ["exp", "paired_test.npz",
                                                                                   "synthetic.json"]
    cams_of = {pid: set() for pid in range(1, num_ids + 1)}
    low, high = layouts._SYSU_IMAGES_PER_CAM
    for cam in range(1, 7):
        for folder in os.listdir(tmp_path / f"cam{cam}"):
            assert len(folder) == 4
            names = sorted(os.listdir(tmp_path / f"cam{cam}" / folder))
            assert names == [f"{k:04d}.jpg" for k in range(1, len(names) + 1)]
            assert low <= len(names) <= high
            cams_of[int(folder)].add(cam)
    for pid, cams in cams_of.items():
        assert cams & set(records.SYSU_RGB_CAMS) and cams & set(records.SYSU_IR_CAMS), pid
    indoor = {pid for pid, cams in cams_of.items() if cams & set(records.SYSU_INDOOR_RGB_CAMS)}
    assert 5 <= len(indoor) <= 7  # ~60% of the ids, as in the real dataset
    assert sum(6 in cams for cams in cams_of.values()) >= 8  # outdoor cameras see nearly everyone

    # IR jpgs are 3-channel with equal channels; RGB jpgs have colour.
    ir_folder = tmp_path / "cam6" / sorted(os.listdir(tmp_path / "cam6"))[0]
    ir = np.asarray(Image.open(ir_folder / "0001.jpg"))
    assert ir.shape == (H, W, 3) and np.array_equal(ir[..., 0], ir[..., 1]) and np.array_equal(ir[..., 0], ir[..., 2])

    splits = _sysu_splits(tmp_path)
    assert [len(splits[name]) for name in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(sum(splits.values(), [])) == list(range(1, num_ids + 1))
    assert set(splits["test"]) & indoor  # the indoor-search protocol has a gallery


def test_fixed_test_persons_whatever_the_number_of_ids(tmp_path):
    """test_ids=T: pids 1..T are the test set, the same persons and images for 12 or
    16 ids; the others train (~75%) and val; the indoor protocol keeps a gallery."""
    for num_ids in (12, 16):
        synthetic.generate(tmp_path / str(num_ids), "sysu", num_ids, seed=0, height=H, width=W, test_ids=5)
    small, large = _sysu_splits(tmp_path / "12"), _sysu_splits(tmp_path / "16")
    assert small["test"] == large["test"] == [1, 2, 3, 4, 5]
    assert [len(small["train"]), len(small["val"])] == [5, 2] and [len(large["train"]), len(large["val"])] == [8, 3]
    assert sorted(large["train"] + large["val"]) == list(range(6, 17))
    for cam in range(1, 7):  # the test persons' images are the same files
        for pid in (pid for pid in range(1, 6) if (tmp_path / "12" / f"cam{cam}" / f"{pid:04d}").exists()):
            folder = f"cam{cam}/{pid:04d}"
            assert sorted(os.listdir(tmp_path / "12" / folder)) == sorted(os.listdir(tmp_path / "16" / folder))
            assert (tmp_path / "12" / folder / "0001.jpg").read_bytes() == (
                tmp_path / "16" / folder / "0001.jpg").read_bytes()
    indoor = layouts._sysu_indoor(0, np.arange(1, 6))
    assert indoor.any() and not indoor.all()  # indoor search has a gallery and outdoor ids
    assert json.loads((tmp_path / "16" / "synthetic.json").read_text())["test_ids"] == 5


# --- Bad input -----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(layout="market"), "layout"),
    (dict(num_ids=1), "num_ids must be >= 2"),
    (dict(layout="sysu", num_ids=4), "num_ids must be >= 5"),
    (dict(seed=-1), "seed"),
    (dict(height=0), "height"),
    (dict(width=-3), "width"),
    (dict(images_per_id=0), "images_per_id"),
    (dict(num_workers=0), "num_workers"),
    (dict(test_ids=2), "test_ids must be 0 for layout 'regdb'"),
    (dict(layout="sysu", num_ids=6, test_ids=5), r"test_ids must be in 0..num_ids - 2 = 4"),
])
def test_bad_arguments_name_the_argument(tmp_path, kwargs, message):
    args = dict(out_dir=tmp_path / "data", layout="regdb", num_ids=4, seed=0, height=H, width=W) | kwargs
    with pytest.raises(ValueError, match=message):
        synthetic.generate(**args)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("layout, num_ids", [("regdb", 3), ("sysu", 5)])
def test_generate_records_what_it_rendered(tmp_path, layout, num_ids):
    """synthetic.json at the root: render version and arguments, rewritten on overwrite."""
    assert synthetic.RENDER_VERSION == 2 and synthetic.METADATA_FILE == "synthetic.json"
    synthetic.generate(tmp_path, layout, num_ids, seed=3, height=H, width=W + 2, images_per_id=1)
    written = json.loads((tmp_path / "synthetic.json").read_text())
    assert written == {"render_version": 2, "layout": layout, "num_ids": num_ids, "seed": 3, "height": H,
                       "width": W + 2, "test_ids": 0, "pairs_per_id": synthetic.PAIRS_PER_ID}
    assert written == synthetic.metadata(layout, num_ids, 3, H, W + 2)
    synthetic.generate(tmp_path, layout, num_ids + 1, seed=4, height=H, width=W, images_per_id=1, overwrite=True)
    assert json.loads((tmp_path / "synthetic.json").read_text()) == {
        "render_version": 2, "layout": layout, "num_ids": num_ids + 1, "seed": 4, "height": H, "width": W,
        "test_ids": 0, "pairs_per_id": synthetic.PAIRS_PER_ID}
    assert [name for name in os.listdir(tmp_path.parent) if name.startswith(".synthetic-")] == []


def test_metadata_only_beside_a_complete_dataset(tmp_path, monkeypatch):
    """Interrupted while moving the new dataset in (before its index): no synthetic.json."""
    synthetic.generate(tmp_path, "regdb", 2, seed=0, height=H, width=W, images_per_id=1)
    assert (tmp_path / "synthetic.json").is_file()
    replace = os.replace

    def interrupted(src, dst):
        if os.path.basename(dst) == "idx":
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(layouts.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path, "regdb", 3, seed=1, height=H, width=W, images_per_id=1, overwrite=True)
    assert not (tmp_path / "idx").exists() and not (tmp_path / "synthetic.json").exists()
    assert [name for name in os.listdir(tmp_path.parent) if name.startswith(".synthetic-")] == []


def test_existing_dataset_needs_overwrite(tmp_path):
    synthetic.generate(tmp_path, "regdb", 2, seed=0, height=H, width=W, images_per_id=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        synthetic.generate(tmp_path, "regdb", 2, seed=0, height=H, width=W, images_per_id=1)
    synthetic.generate(tmp_path, "regdb", 3, seed=1, height=H, width=W, images_per_id=1, overwrite=True)
    assert sorted(os.listdir(tmp_path / "Visible"), key=int) == ["1", "2", "3"]
    assert [name for name in os.listdir(tmp_path.parent) if name.startswith(".synthetic-")] == []


def test_cli_names_the_bad_flag_and_writes_a_sheet(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "jsia_tf.data.synthetic", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    bad = run(f"--out={tmp_path / 'data'}", "--layout=sysu", "--num_ids=3")
    assert bad.returncode != 0 and "num_ids must be >= 5" in bad.stderr
    good = run(f"--sheet={tmp_path / 'sheet.png'}", f"--height={H}", f"--width={W}")
    assert good.returncode == 0, good.stderr
    assert Image.open(tmp_path / "sheet.png").size == (6 * W, 3 * H)


def test_import_defines_no_flags():
    """The training entry point imports this module and owns --seed, --height, ..."""
    code = ("from absl import flags; flags.DEFINE_integer('seed', 0, ''); "
            "import jsia_tf.data.synthetic; assert 'layout' not in flags.FLAGS")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
