"""RegDB and SYSU-MM01 readers: values against the tiny fixture folders, and bad input."""

import os
import shutil

import pytest

from jsia_tf.data import pipeline, records, synthetic
from jsia_tf.data.regdb import load_regdb
from jsia_tf.data.sysu import load_sysu, read_ids


def _relative(paths, root):
    return [os.path.relpath(path, root) for path in paths]


# --- RegDB ---------------------------------------------------------------------------


def test_regdb_trial_1(regdb_root):
    dataset = load_regdb(regdb_root, 1)
    # np.random.default_rng(1).permutation(1..6) = [5, 1, 3, 2, 6, 4] (conftest splits it in half).
    train_ids, test_ids = [1, 3, 5], [2, 4, 6]
    assert dataset.name == "regdb"
    assert dataset.train_pids.tolist() == train_ids
    assert dataset.num_classes == 3
    # idx lines list each folder from v_4 down to v_1; image_index is the folder position.
    assert _relative(dataset.train_rgb.paths[:4], regdb_root) == [f"Visible/1/v_{n}.bmp" for n in (4, 3, 2, 1)]
    assert dataset.train_rgb.image_index[:4].tolist() == [4, 3, 2, 1]
    assert dataset.train_rgb.pids.tolist() == [pid for pid in train_ids for _ in range(4)]
    assert set(dataset.train_rgb.cams.tolist()) == {records.REGDB_VISIBLE_CAM}
    assert _relative(dataset.train_ir.paths[4:8], regdb_root) == [f"Thermal/3/t_{n}.bmp" for n in (4, 3, 2, 1)]
    assert set(dataset.train_ir.cams.tolist()) == {records.REGDB_THERMAL_CAM}
    assert dataset.train_labels(dataset.train_ir).tolist() == [c for c in range(3) for _ in range(4)]
    # Test set: every visible then every thermal image of the test ids.
    assert len(dataset.test) == 2 * 3 * 4
    assert dataset.test.cams.tolist() == [1] * 12 + [2] * 12
    assert dataset.test.pids.tolist() == [pid for pid in test_ids for _ in range(4)] * 2
    assert all(os.path.isabs(path) and os.path.isfile(path) for path in dataset.test.paths)


def test_regdb_trials_are_different_splits(regdb_root):
    # default_rng(2).permutation(1..6) = [4, 6, 3, 5, 1, 2].
    dataset = load_regdb(regdb_root, 2)
    assert dataset.train_pids.tolist() == [3, 4, 6]
    assert sorted(set(dataset.test.pids.tolist())) == [1, 2, 5]


@pytest.mark.parametrize("trial", [0, 11, "1", 1.0])
def test_regdb_bad_trial(regdb_root, trial):
    with pytest.raises(records.DatasetError, match="trial"):
        load_regdb(regdb_root, trial)


def test_regdb_missing_root_and_folders(regdb_root, tmp_path):
    with pytest.raises(records.DatasetError, match="nowhere.*missing directory"):
        load_regdb(tmp_path / "nowhere", 1)
    shutil.rmtree(os.path.join(regdb_root, "Thermal"))
    with pytest.raises(records.DatasetError, match="Thermal: missing directory"):
        load_regdb(regdb_root, 1)


def test_regdb_missing_idx_file(regdb_root):
    os.remove(os.path.join(regdb_root, "idx", "test_thermal_1.txt"))
    with pytest.raises(records.DatasetError, match=r"idx/test_thermal_1\.txt: missing RegDB split file"):
        load_regdb(regdb_root, 1)
    with pytest.raises(records.DatasetError, match=r"idx/train_visible_3\.txt: missing"):
        load_regdb(regdb_root, 3)  # the fixture writes trials 1 and 2 only


def _rewrite_line(path, line_number, text):
    with open(path) as f:
        lines = f.readlines()
    lines[line_number - 1] = text
    with open(path, "w") as f:
        f.writelines(lines)


@pytest.mark.parametrize("line", ["Visible/1/v_4.bmp\n", "Visible/1/v_4.bmp one\n", "Visible/1/v_4.bmp 1 2\n"])
def test_regdb_malformed_line_names_file_line_and_text(regdb_root, line):
    idx = os.path.join(regdb_root, "idx", "train_visible_1.txt")
    _rewrite_line(idx, 3, line)
    with pytest.raises(records.DatasetError) as error:
        load_regdb(regdb_root, 1)
    assert f"train_visible_1.txt:3: {line.strip()!r}" in str(error.value)


def test_regdb_idx_path_that_does_not_exist(regdb_root):
    _rewrite_line(os.path.join(regdb_root, "idx", "test_thermal_1.txt"), 2, "Thermal/2/t_9.bmp 2\n")
    with pytest.raises(records.DatasetError, match=r"test_thermal_1\.txt:2: image .*Thermal/2/t_9\.bmp does not exist"):
        load_regdb(regdb_root, 1)


def test_regdb_training_id_without_thermal_images(regdb_root):
    idx = os.path.join(regdb_root, "idx", "train_thermal_1.txt")
    with open(idx) as f:
        lines = [line for line in f if not line.startswith("Thermal/3/")]
    with open(idx, "w") as f:
        f.writelines(lines)
    with pytest.raises(records.DatasetError, match=r"train_thermal_1\.txt: training ids \[3\] have no thermal"):
        load_regdb(regdb_root, 1)


# --- SYSU-MM01 -----------------------------------------------------------------------


def test_sysu_values(sysu_root):
    dataset = load_sysu(sysu_root)
    assert dataset.name == "sysu"
    # Train = train ids (1, 2, 3) + val id (4).
    assert dataset.train_pids.tolist() == [1, 2, 3, 4]
    # RGB folders: id 1 cams 1, 4; id 2 cams 2, 5; id 3 cams 1, 2; id 4 cam 4; 3 images each.
    assert len(dataset.train_rgb) == 7 * 3
    assert _relative(dataset.train_rgb.paths[:6], sysu_root) == [
        "cam1/0001/0001.jpg", "cam1/0001/0002.jpg", "cam1/0001/0003.jpg",
        "cam4/0001/0001.jpg", "cam4/0001/0002.jpg", "cam4/0001/0003.jpg"]
    assert dataset.train_rgb.cams.tolist()[:6] == [1, 1, 1, 4, 4, 4]
    assert dataset.train_rgb.image_index.tolist()[:6] == [1, 2, 3, 1, 2, 3]
    assert set(dataset.train_rgb.cams.tolist()) <= set(records.SYSU_RGB_CAMS)
    # IR folders: id 1 cam 3; id 2 cam 6; id 3 cams 3, 6; id 4 cam 6.
    assert len(dataset.train_ir) == 5 * 3
    assert dataset.train_ir.pids.tolist() == [1] * 3 + [2] * 3 + [3] * 6 + [4] * 3
    assert dataset.train_ir.cams.tolist() == [3] * 3 + [6] * 3 + [3] * 3 + [6] * 3 + [6] * 3
    # Test: every image of ids 5 (cams 1, 3), 6 (cams 2, 4, 6), 7 (cams 5, 6), IR included.
    assert len(dataset.test) == 7 * 3
    assert dataset.test.cams.tolist() == [c for c in (1, 3, 2, 4, 6, 5, 6) for _ in range(3)]
    assert dataset.test.pids.tolist() == [5] * 6 + [6] * 9 + [7] * 6


def test_sysu_image_index_is_the_sorted_folder_position(sysu_root):
    os.remove(os.path.join(sysu_root, "cam6", "0006", "0001.jpg"))
    test = load_sysu(sysu_root).test
    in_folder = (test.pids == 6) & (test.cams == 6)
    assert _relative(test.paths[in_folder], sysu_root) == ["cam6/0006/0002.jpg", "cam6/0006/0003.jpg"]
    assert test.image_index[in_folder].tolist() == [1, 2]


def test_sysu_id_files_tolerate_whitespace_and_reject_non_integers(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text(" 1, 2 ,\n4,\n\n 10\n")
    assert read_ids(str(path)) == [1, 2, 4, 10]
    path.write_text("1,2,x3\n")
    with pytest.raises(records.DatasetError, match=r"ids\.txt: 'x3' is not a person id"):
        read_ids(str(path))
    path.write_text("1.5")
    with pytest.raises(records.DatasetError, match="'1.5' is not a person id"):
        read_ids(str(path))
    path.write_text(" \n")
    with pytest.raises(records.DatasetError, match="no person ids"):
        read_ids(str(path))


def test_sysu_missing_root_camera_and_exp_file(sysu_root, tmp_path):
    with pytest.raises(records.DatasetError, match="nowhere: not a directory"):
        load_sysu(tmp_path / "nowhere")
    os.remove(os.path.join(sysu_root, "exp", "val_id.txt"))
    with pytest.raises(records.DatasetError, match=r"exp/val_id\.txt: missing"):
        load_sysu(sysu_root)
    shutil.rmtree(os.path.join(sysu_root, "cam5"))
    with pytest.raises(records.DatasetError, match="cam5: missing camera folder"):
        load_sysu(sysu_root)


def test_sysu_listed_id_without_any_folder(sysu_root):
    with open(os.path.join(sysu_root, "exp", "test_id.txt"), "w") as f:
        f.write("5,6,7,9")
    with pytest.raises(records.DatasetError, match=r"test_id\.txt: person id 9 has no folder in any camera"):
        load_sysu(sysu_root)


def test_sysu_training_id_without_ir_images(sysu_root):
    shutil.rmtree(os.path.join(sysu_root, "cam6", "0004"))  # id 4 (val) is IR only in cam 6
    with pytest.raises(records.DatasetError, match=r"training ids \[4\].*have no IR images"):
        load_sysu(sysu_root)


def test_sysu_train_and_test_ids_must_be_disjoint(sysu_root):
    with open(os.path.join(sysu_root, "exp", "test_id.txt"), "w") as f:
        f.write("3,5,6,7")
    with pytest.raises(records.DatasetError, match=r"ids \[3\] are also training ids"):
        load_sysu(sysu_root)


# --- decoding check and dispatcher ---------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_verify_names_the_undecodable_file(regdb_root, sysu_root, damage):
    for root, name, bad in ((regdb_root, "regdb", "Thermal/4/t_2.bmp"), (sysu_root, "sysu", "cam6/0006/0002.jpg")):
        path = os.path.join(root, bad)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(b"not an image at all" if damage == "garbage" else data[: len(data) // 2])
        pipeline.load_dataset(name, root, trial=1)  # readers do not decode
        with pytest.raises(records.DatasetError, match=f"1 image file\\(s\\) do not decode: .*{bad}: cannot be "):
            pipeline.load_dataset(name, root, trial=1, verify=True)


def test_verify_names_every_bad_file_and_decodes_each_good_one_once(regdb_root, monkeypatch):
    decoded = []
    decode = pipeline.decode_image
    monkeypatch.setattr(pipeline, "decode_image", lambda path: decoded.append(path) or decode(path))
    first = pipeline.load_dataset("regdb", regdb_root, trial=1, verify=True)
    paths = [str(p) for images in (first.train_rgb, first.train_ir, first.test) for p in images.paths]
    assert sorted(decoded) == sorted(paths)
    assert os.path.exists(os.path.join(regdb_root, pipeline.VERIFIED_IMAGES))
    decoded.clear()
    pipeline.load_dataset("regdb", regdb_root, trial=1, verify=True)
    assert decoded == []  # the cached verdict: nothing changed
    bad = [os.path.join(regdb_root, name) for name in ("Visible/1/v_1.bmp", "Thermal/6/t_4.bmp")]
    for path in bad:  # a text file named .bmp, and a BMP truncated to 10 bytes
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(b"hello" if "Visible" in path else data[:10])
    with pytest.raises(records.DatasetError) as error:
        pipeline.load_dataset("regdb", regdb_root, trial=1, verify=True)
    assert sorted(decoded) == sorted(bad)  # only the changed files are decoded again
    assert str(error.value).startswith("2 image file(s) do not decode: ")
    assert all(f"{path}: cannot be decoded as a BMP/JPEG/PNG image (" in str(error.value) for path in bad)
    assert f"{bad[0]}: cannot be decoded as a BMP/JPEG/PNG image (Unknown image file format" in str(error.value)
    assert "{{" not in str(error.value) and "[Op:" not in str(error.value)  # TensorFlow's node names
    os.remove(bad[1])  # deleted after the readers listed it
    with pytest.raises(records.DatasetError, match=f"{bad[1]}: cannot be decoded as a BMP/JPEG/PNG image \\("):
        pipeline.check_images([first.train_ir, first.test], regdb_root)


def test_load_dataset_dispatch(regdb_root, sysu_root):
    assert pipeline.load_dataset("regdb", regdb_root, trial=2).train_pids.tolist() == \
        load_regdb(regdb_root, 2).train_pids.tolist()
    assert pipeline.load_dataset("sysu", sysu_root, verify=True).num_classes == 4
    with pytest.raises(ValueError, match="unknown dataset 'market'"):
        pipeline.load_dataset("market", regdb_root)


# --- the synthetic generator's output ------------------------------------------------


def test_readers_accept_the_synthetic_generator(tmp_path):
    synthetic.generate(tmp_path / "regdb", "regdb", num_ids=6, seed=0, height=32, width=16, images_per_id=3)
    synthetic.generate(tmp_path / "sysu", "sysu", num_ids=5, seed=0, height=32, width=16)
    for trial in (1, 10):
        dataset = pipeline.load_dataset("regdb", tmp_path / "regdb", trial=trial, verify=True)
        test_ids = set(dataset.test.pids.tolist())
        assert dataset.num_classes == 3 and len(test_ids) == 3
        assert set(dataset.train_pids.tolist()) | test_ids == set(range(1, 7))
        # Files are <v|t>_<pid:05d>_<k:02d>.bmp in folder <pid>: the label is the folder, k the position.
        for images in (dataset.train_rgb, dataset.train_ir, dataset.test):
            names = [os.path.basename(path) for path in images.paths]
            assert images.pids.tolist() == [int(os.path.basename(os.path.dirname(p))) for p in images.paths]
            assert images.image_index.tolist() == [int(name[8:10]) for name in names]
    dataset = pipeline.load_dataset("sysu", tmp_path / "sysu", verify=True)
    listed = [read_ids(os.path.join(tmp_path, "sysu", "exp", f"{split}_id.txt")) for split in ("train", "val", "test")]
    assert dataset.train_pids.tolist() == sorted(listed[0] + listed[1])
    assert sorted(set(dataset.test.pids.tolist())) == sorted(listed[2])
    assert set(dataset.train_ir.cams.tolist()) <= set(records.SYSU_IR_CAMS)
    assert dataset.test.image_index.tolist() == [int(os.path.basename(p)[:4]) for p in dataset.test.paths]
