"""Tests of the synthetic RGB-IR pedestrian generator (jsia_tf/data/synthetic.py)."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from jsia_tf.data import records
from jsia_tf.data import synthetic

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

@pytest.mark.parametrize("view", synthetic.VIEWS)
def test_ir_is_blind_to_colour_rgb_is_not(view):
    """The paper's premise: IR -> RGB is one-to-many. Same draw, colours swapped."""
    person = _first_identity(0, upper_print="stripes")
    recoloured = dataclasses.replace(person, colours=synthetic.sample_identity(1, 1).colours)
    assert recoloured.colours != person.colours
    draw = _draw(view)
    for camera in (synthetic.REGDB_THERMAL, synthetic.SYSU_CAMERAS[3], synthetic.SYSU_CAMERAS[6]):
        np.testing.assert_array_equal(synthetic.render_image(person, draw, camera, PARTS_H, PARTS_W),
                                      synthetic.render_image(recoloured, draw, camera, PARTS_H, PARTS_W))
    for camera in (synthetic.REGDB_VISIBLE, synthetic.SYSU_CAMERAS[1]):
        rgb = synthetic.render_image(person, draw, camera, PARTS_H, PARTS_W)
        rgb_recoloured = synthetic.render_image(recoloured, draw, camera, PARTS_H, PARTS_W)
        assert rgb.shape == (PARTS_H, PARTS_W, 3)
        assert np.mean(rgb != rgb_recoloured) > 0.1


def test_ir_sees_what_colour_does_not_show():
    """Garment thickness (not a colour) changes IR; thin garments are warmer."""
    person = _first_identity(0, upper_type="shirt")
    draw = _draw("front")
    labels, _ = synthetic.render_parts(person, draw, PARTS_H, PARTS_W)
    upper = labels == synthetic.UPPER
    thin = synthetic.render_image(dataclasses.replace(person, upper_thickness=0.0), draw,
                                  synthetic.REGDB_THERMAL, PARTS_H, PARTS_W)
    thick = synthetic.render_image(dataclasses.replace(person, upper_thickness=1.0), draw,
                                   synthetic.REGDB_THERMAL, PARTS_H, PARTS_W)
    assert thin[upper].mean() > thick[upper].mean() + 20


def test_temperatures_follow_material():
    temps = synthetic.part_temperatures(_first_identity(0, upper_type="coat"))
    assert temps[synthetic.FACE] > temps[synthetic.SKIN] > temps[synthetic.LOWER] > temps[synthetic.BAG]
    assert temps[synthetic.SKIN] > temps[synthetic.UPPER] > temps[synthetic.BAG]
    assert temps[synthetic.UPPER] == temps[synthetic.UPPER_PRINT]  # a print is colour only
    # Rendered: the face is brighter than the background in every view that shows it.
    person = _first_identity(0, upper_type="coat")
    for view in ("front", "side"):
        labels, _ = synthetic.render_parts(person, _draw(view), PARTS_H, PARTS_W)
        ir = synthetic.render_image(person, _draw(view), synthetic.REGDB_THERMAL, PARTS_H, PARTS_W)
        assert ir[labels == synthetic.FACE].mean() > ir[labels == synthetic.BACKGROUND].mean() + 60


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


def test_identities_differ_and_are_seeded():
    assert synthetic.sample_identity(0, 1) == synthetic.sample_identity(0, 1)
    assert synthetic.sample_identity(0, 1) != synthetic.sample_identity(1, 1)
    assert synthetic.sample_identity(0, 1) != synthetic.sample_identity(0, 2)


def test_example_sheet_rgb_over_ir():
    sheet = synthetic.example_sheet(seed=0, num_ids=3, height=H, width=W)
    assert sheet.shape == (2 * H, 3 * W, 3) and sheet.dtype == np.uint8
    ir_row = sheet[H:]
    np.testing.assert_array_equal(ir_row[..., 0], ir_row[..., 1])
    np.testing.assert_array_equal(ir_row[..., 0], ir_row[..., 2])
    assert np.any(sheet[:H, ..., 0] != sheet[:H, ..., 2])  # the RGB row has colour
    np.testing.assert_array_equal(
        sheet[H:, W:2 * W, 0], synthetic.render_identity_images(0, 2, synthetic.REGDB_THERMAL, 1, H, W)[0])


# --- RegDB layout ------------------------------------------------------------------

def test_regdb_layout_and_index(tmp_path):
    num_ids, images = 5, 3
    synthetic.generate(tmp_path, "regdb", num_ids, seed=0, height=H, width=W, images_per_id=images)
    assert sorted(os.listdir(tmp_path)) == ["Thermal", "Visible", "idx"]
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
    for trial in range(1, synthetic.REGDB_TRIALS + 1):
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

def test_sysu_layout_and_splits(tmp_path):
    num_ids = 10
    synthetic.generate(tmp_path, "sysu", num_ids, seed=0, height=H, width=W)
    assert sorted(os.listdir(tmp_path)) == [f"cam{cam}" for cam in range(1, 7)] + ["exp"]
    cams_of = {pid: set() for pid in range(1, num_ids + 1)}
    low, high = synthetic._SYSU_IMAGES_PER_CAM
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

    splits = {}
    for name in ("train", "val", "test"):
        lines = (tmp_path / "exp" / f"{name}_id.txt").read_text().splitlines()
        assert len(lines) == 1
        splits[name] = [int(pid) for pid in lines[0].split(",")]
    assert [len(splits[name]) for name in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(sum(splits.values(), [])) == list(range(1, num_ids + 1))
    assert set(splits["test"]) & indoor  # the indoor-search protocol has a gallery


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
])
def test_bad_arguments_name_the_argument(tmp_path, kwargs, message):
    args = dict(out_dir=tmp_path / "data", layout="regdb", num_ids=4, seed=0) | kwargs
    with pytest.raises(ValueError, match=message):
        synthetic.generate(**args)
    assert not (tmp_path / "data").exists()


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
    assert Image.open(tmp_path / "sheet.png").size == (6 * W, 2 * H)


def test_import_defines_no_flags():
    """The training entry point imports this module and owns --seed, --height, ..."""
    code = ("from absl import flags; flags.DEFINE_integer('seed', 0, ''); "
            "import jsia_tf.data.synthetic; assert 'layout' not in flags.FLAGS")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
