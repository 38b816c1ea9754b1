"""The main job end to end on the smoke preset, and its handling of bad flags and data."""

import json
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

REPO = pathlib.Path(__file__).resolve().parents[1]


def _train(*args):
    return subprocess.run(
        [sys.executable, "-m", "jsia_tf.train", f"--flagfile={REPO / 'configs' / 'smoke.flags'}", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    data_dir, run_dir = root / "data", root / "run"
    result = _train(f"--data_dir={data_dir}", f"--run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return data_dir, run_dir


def test_smoke_run_writes_config_metrics_and_summaries(smoke_run):
    data_dir, run_dir = smoke_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["data_dir"] == str(data_dir)
    assert (config["data"]["height"], config["data"]["width"]) == (32, 16)
    assert config["steps"] == 2
    # The preset generated its synthetic RegDB dataset: 8 ids, 10 images per modality.
    assert len(list((data_dir / "Visible").glob("*/*.bmp"))) == 80
    assert len(list((data_dir / "idx").glob("*.txt"))) == 40

    metrics = json.loads((run_dir / "metrics_pixel_baseline.json").read_text())
    assert set(metrics) == {"regdb_v2t", "regdb_t2v"}
    for values in metrics.values():
        assert set(values["cmc"]) == {"1", "5", "10", "20"}
        cmc = [values["cmc"][k] for k in ("1", "5", "10", "20")]
        assert cmc == sorted(cmc) and 0.0 <= cmc[0] and cmc[-1] <= 1.0  # CMC is non-decreasing
        assert 0.0 < values["mAP"] <= 1.0

    events = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"batch/rgb", "batch/ir", "input/images_per_second", "eval_pixel_baseline/regdb_v2t/rank1"} <= tags
    rank1 = events.Tensors("eval_pixel_baseline/regdb_v2t/rank1")[-1]
    assert float(tf.make_ndarray(rank1.tensor_proto)) == pytest.approx(metrics["regdb_v2t"]["cmc"]["1"], abs=1e-6)
    # Image summaries: [width, height, png, ...] strings; the grid is of 32x16 images.
    image = events.Tensors("batch/rgb")[0].tensor_proto.string_val
    assert (int(image[0]), int(image[1])) == (16, 32)


def test_second_run_reuses_the_generated_dataset(smoke_run, tmp_path):
    data_dir, _ = smoke_run
    before = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()}
    result = _train(f"--data_dir={data_dir}", f"--run_dir={tmp_path / 'run2'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()} == before
    assert "Generating a synthetic" not in result.stderr


@pytest.mark.parametrize("flag, expected", [
    ("--trial=11", "--trial=11: expected a RegDB trial in 1..10"),
    ("--random_erasing=1.5", "--random_erasing=1.5: expected a probability in [0, 1]"),
    ("--sysu_shots=1,3", "--sysu_shots=(1, 3): expected a non-empty subset of (1, 10)"),
    ("--synthetic_ids=1", "--synthetic_ids=1"),
])
def test_bad_flags_name_the_flag(tmp_path, flag, expected):
    result = _train(f"--data_dir={tmp_path / 'data'}", f"--run_dir={tmp_path / 'run'}", flag)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_dataset"
    result = _train(f"--data_dir={missing}", f"--run_dir={tmp_path / 'run'}", "--synthetic_ids=0")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"--data_dir={missing}" in result.stderr


@pytest.mark.parametrize("preset", ["demo", "smoke", "regdb", "sysu"])
def test_presets_parse_into_valid_configs(preset):
    from absl import flags
    from jsia_tf import train

    argv = ["train", f"--flagfile={REPO / 'configs' / f'{preset}.flags'}"]
    if preset == "smoke":  # the tests give it its folders
        argv += ["--data_dir=data", "--run_dir=run"]
    try:
        flags.FLAGS(argv)
        cfg = train.config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert cfg.data.dataset == ("sysu" if preset == "sysu" else "regdb")
    if preset in ("regdb", "sysu"):
        # Paper Sec. 4.2: 256x128 inputs, 16 persons x (4 RGB + 4 IR), flip only.
        data = cfg.data
        assert (data.height, data.width, data.num_ids, data.num_instances) == (256, 128, 16, 4)
        assert (data.flip, data.pad, data.random_erasing, data.channel_aug) == (True, 0, 0.0, 0.0)
