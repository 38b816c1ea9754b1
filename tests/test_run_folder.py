"""Nothing lost, nothing silent (issue 26): a run folder whose newest checkpoints are deleted
or corrupt resumes from the newest one that loads and says which file failed; a start
that would lose recorded work or mismatch the run's checkpoints is refused before any
file changes; one training per folder.

Each test copies one finished smoke run (G pre-training only: 3 steps, a checkpoint each)
and breaks the copy as a user would, then runs the command.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

from jsia_tf import config as config_lib
from jsia_tf import runs

REPO = pathlib.Path(__file__).resolve().parents[1]
TOTAL_STEPS = 3
# The finished run's flags; every rerun passes the same ones unless a test changes one.
RUN_FLAGS = ("--joint_epochs=0", f"--steps_per_epoch={TOTAL_STEPS}", "--checkpoint_every=1", "--image_every=0")


def _train(data_dir, run_dir, *args):
    return subprocess.run(
        [sys.executable, "-m", "jsia_tf.train", f"--flagfile={REPO / 'configs' / 'smoke.flags'}",
         f"--data_dir={data_dir}", f"--run_dir={run_dir}", *RUN_FLAGS, *args],
        cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    data_dir, run_dir = root / "data", root / "run"
    result = _train(data_dir, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return data_dir, run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """(data_dir, a copy of the finished run folder) for a test to break."""
    data_dir, run_dir = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    # The state file holds absolute paths: point them at the copy.
    state = copy / "checkpoints" / "checkpoint"
    state.write_text(state.read_text().replace(str(run_dir), str(copy)))
    return data_dir, copy


def _files(folder):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*") if p.is_file() and p.name != runs.LOCK_FILE}


def _checkpoint_step(prefix):
    return int(tf.train.load_variable(str(prefix), "step/.ATTRIBUTES/VARIABLE_VALUE"))


@pytest.mark.large
def test_deleting_the_newest_checkpoint_resumes_from_the_next_newest_and_says_so(run_copy):
    data_dir, run_dir = run_copy
    checkpoints = run_dir / "checkpoints"
    for path in checkpoints.glob("ckpt-3.*"):
        path.unlink()
    result = _train(data_dir, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"The files of checkpoint(s) {checkpoints / 'ckpt-3'}" in result.stderr
    assert f"Resumed from {checkpoints / 'ckpt-2'} (step 2)" in result.stderr
    assert f"Training steps 2..{TOTAL_STEPS} of {TOTAL_STEPS}" in result.stderr
    # The older checkpoints are kept; the run ends with its last one written again.
    assert sorted(p.name for p in checkpoints.glob("*.index")) == ["ckpt-1.index", "ckpt-2.index", "ckpt-3.index"]
    assert _checkpoint_step(checkpoints / "ckpt-1") == 1
    assert _checkpoint_step(tf.train.latest_checkpoint(str(checkpoints))) == TOTAL_STEPS


@pytest.mark.large
def test_corrupt_checkpoints_fall_back_with_the_file_named_in_export_and_train(run_copy, tmp_path):
    data_dir, run_dir = run_copy
    checkpoints = run_dir / "checkpoints"
    index, [data] = checkpoints / "ckpt-3.index", list(checkpoints.glob("ckpt-2.data-*"))
    index.write_bytes(os.urandom(100))  # the cases: 100 random bytes in the index,
    with open(data, "r+b") as f:  # 4 KB of garbage over the data file
        f.write(os.urandom(4096))

    exported = subprocess.run(
        [sys.executable, "-m", "jsia_tf.export", f"--run_dir={run_dir}", f"--export_dir={tmp_path / 'jsia'}",
         "--max_pixels=1000"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "Traceback" not in exported.stderr
    metadata = json.loads((tmp_path / "jsia" / "1" / "assets" / "jsia_metadata.json").read_text())
    assert (metadata["checkpoint"], metadata["max_pixels"]) == (str(checkpoints / "ckpt-1"), 1000)
    named = subprocess.run(
        [sys.executable, "-m", "jsia_tf.export", f"--run_dir={run_dir}", f"--export_dir={tmp_path / 'jsia'}",
         f"--checkpoint={checkpoints / 'ckpt-3'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert named.returncode != 0 and "Traceback" not in named.stderr
    assert f"--checkpoint={checkpoints / 'ckpt-3'}: {index}: not a checkpoint index" in named.stderr
    assert f"{index}: not a checkpoint index" in exported.stderr
    assert f"{data}: the values do not load" in exported.stderr
    assert f"{checkpoints / 'ckpt-1'} is the newest checkpoint that loads" in exported.stderr

    result = _train(data_dir, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"{index}: not a checkpoint index" in result.stderr
    assert f"{data}: the values do not load (TensorBundle at {checkpoints / 'ckpt-2'} shard 0" in result.stderr
    assert "{{function_node" not in result.stderr and "[Op:" not in result.stderr  # TensorFlow's node names
    assert f"Resumed from {checkpoints / 'ckpt-1'} (step 1)" in result.stderr
    assert _checkpoint_step(tf.train.latest_checkpoint(str(checkpoints))) == TOTAL_STEPS
    assert _checkpoint_step(checkpoints / "ckpt-1") == 1


@pytest.mark.large
def test_a_start_that_would_lose_or_mismatch_the_run_changes_no_file(run_copy):
    data_dir, run_dir = run_copy
    before = _files(run_dir)

    mismatch = _train(data_dir, run_dir, "--backbone_widths=16,16,16,32", "--num_regions=3")
    assert mismatch.returncode != 0 and "Traceback" not in mismatch.stderr
    [line] = [line for line in mismatch.stderr.splitlines() if line.startswith("error:")]
    assert "--backbone_widths: the run has (8, 16, 16, 32), the flags give (16, 16, 16, 32)" in line
    assert "--num_regions: the run has 2, the flags give 3" in line and "--restart" in line

    for path in (run_dir / "checkpoints").glob("ckpt-*.index"):
        path.write_bytes(b"not an index")
    broken = _files(run_dir)
    none_loads = _train(data_dir, run_dir)
    assert none_loads.returncode != 0 and "Traceback" not in none_loads.stderr
    assert f"no checkpoint in {run_dir / 'checkpoints'} loads" in none_loads.stderr
    assert f": {runs.RESTART_ADVICE}" in none_loads.stderr
    assert all(f"ckpt-{step}.index: not a checkpoint index" in none_loads.stderr for step in (1, 2, 3))
    assert _files(run_dir) == broken

    shutil.rmtree(run_dir / "checkpoints")
    no_checkpoint = _train(data_dir, run_dir)
    assert no_checkpoint.returncode != 0 and "Traceback" not in no_checkpoint.stderr
    assert "holds metrics.json, eval_history.json of a run that trained, but no checkpoint" in no_checkpoint.stderr
    assert {name: stat for name, stat in before.items() if not name.startswith("checkpoints")} == _files(run_dir)


@pytest.mark.large
def test_restart_moves_the_previous_run_aside_and_starts_at_step_0(run_copy):
    data_dir, run_dir = run_copy
    before = sorted(p.name for p in run_dir.iterdir() if p.name != runs.LOCK_FILE)
    result = _train(data_dir, run_dir, "--restart", "--steps_per_epoch=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training steps 0..1 of 1" in result.stderr
    [aside] = run_dir.glob("restarted-*")
    assert sorted(p.name for p in aside.iterdir()) == before
    assert sorted(p.name for p in (aside / "checkpoints").glob("*.index")) == [f"ckpt-{s}.index" for s in (1, 2, 3)]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.index")) == ["ckpt-1.index"]


def test_one_training_per_run_folder_and_the_lock_dies_with_its_holder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(  # holds the lock as a training does, until killed
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"f = open({str(run_dir / runs.LOCK_FILE)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
         "f.write(str(os.getpid())); f.flush(); print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run(
            [sys.executable, "-m", "jsia_tf.train", f"--flagfile={REPO / 'configs' / 'smoke.flags'}",
             f"--data_dir={tmp_path / 'data'}", f"--run_dir={run_dir}"],
            cwd=REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode != 0 and "Traceback" not in second.stderr
        assert f"--run_dir={run_dir} is in use by another training (PID {holder.pid})" in second.stderr
        assert not (tmp_path / "data").exists() and not (run_dir / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with runs.lock_run_folder(run_dir) as lock:  # the kernel released the killed holder's lock
        assert (run_dir / runs.LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(runs.RunFolderError, match=f"PID {os.getpid()}"):
            runs.lock_run_folder(run_dir)  # another open file: flock refuses it even in this process
    assert lock.closed


def test_resume_conflicts_name_every_field_the_checkpoints_fix_and_only_those():
    base = config_lib.Config(run_dir="r", data=config_lib.DataConfig(data_dir="d"))
    changed = config_lib.Config(
        run_dir="elsewhere", data=config_lib.DataConfig(data_dir="moved", trial=2),
        model=config_lib.ModelConfig(style_dim=64, sl="separate"),
        loss=config_lib.LossConfig(lambda_il=0.5), eval=config_lib.EvalConfig(batch_size=8))
    assert config_lib.resume_conflicts(base, changed) == [
        "--trial: the run has 1, the flags give 2", "--sl: the run has 'shared', the flags give 'separate'",
        "--style_dim: the run has 128, the flags give 64"]
    assert config_lib.resume_conflicts(base, base) == []


# config.json's field names before issue 27, as the run folders of that version hold them.
_EARLIER_NAMES = {"model": {"sl": "set_level"},
                  "loss": {"il": "instance_alignment", "local": "local_alignment", "ui": "unseen_identity",
                           "lambda_local": "lambda_lr"}}


def _write_earlier_names(path):
    raw = json.loads(path.read_text())
    for section, names in _EARLIER_NAMES.items():
        raw[section] = {names.get(name, name): value for name, value in raw[section].items()}
    path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")


def test_a_config_json_with_the_earlier_field_names_loads_as_today(tmp_path):
    config = config_lib.Config(
        run_dir="r", data=config_lib.DataConfig(data_dir="d"), model=config_lib.ModelConfig(sl="separate"),
        loss=config_lib.LossConfig(il=False, local="unpaired", ui=False, lambda_local=0.5))
    path = tmp_path / "config.json"
    config.save(path)
    _write_earlier_names(path)
    assert '"local_alignment": "unpaired"' in path.read_text() and '"local":' not in path.read_text()
    assert config_lib.Config.load(path) == config


@pytest.mark.large
def test_a_run_folder_with_the_earlier_field_names_resumes_exports_and_analyzes(run_copy, tmp_path):
    data_dir, run_dir = run_copy
    _write_earlier_names(run_dir / "config.json")
    resumed = _train(data_dir, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {run_dir / 'checkpoints' / 'ckpt-3'} (step 3)" in resumed.stderr
    _write_earlier_names(run_dir / "config.json")
    for command in (("jsia_tf.export", f"--export_dir={tmp_path / 'jsia'}"),
                    ("jsia_tf.analyze", f"--out={tmp_path / 'analysis'}", "--what=paired", "--num_identities=2")):
        result = subprocess.run([sys.executable, "-m", command[0], f"--run_dir={run_dir}", *command[1:]], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.large
def test_an_undecodable_test_image_is_named_before_training_starts(finished_run, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(finished_run[0], data_dir)
    first_test_image = (data_dir / "idx" / "test_thermal_1.txt").read_text().split()[0]
    bad = data_dir / first_test_image
    bad.write_bytes(bad.read_bytes()[:10])  # truncated to 10 bytes
    run_dir = tmp_path / "run"
    result = _train(data_dir, run_dir)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: --data_dir={data_dir}: 1 image file(s) do not decode: {bad}: cannot be decoded as "
                           "a BMP/JPEG/PNG image (")
    assert "Training steps" not in result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [runs.LOCK_FILE]  # no config.json, no checkpoint


def test_a_checkpoint_state_file_without_its_checkpoints_is_recorded_work(tmp_path):
    """Every ckpt-* file deleted, the state file kept: refused, not a silent start at step 0;
    a fresh folder, or one with only a config.json of a run that saved nothing, starts."""
    cfg = config_lib.Config(run_dir=str(tmp_path), data=config_lib.DataConfig(data_dir="d"))
    runs.prepare_run_folder(tmp_path, cfg, restart=False)
    cfg.save(tmp_path / "config.json")
    runs.prepare_run_folder(tmp_path, cfg, restart=False)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "checkpoint").write_text(  # CheckpointManager's state file (a text proto)
        'model_checkpoint_path: "ckpt-4"\nall_model_checkpoint_paths: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-4"\n')
    with pytest.raises(runs.RunFolderError, match=re.escape(
            f"--run_dir={tmp_path} holds checkpoints/checkpoint (listing ckpt-2, ckpt-4) of a run that trained, but "
            f"no checkpoint to resume from in {checkpoints}: {runs.RESTART_ADVICE}")):
        runs.prepare_run_folder(tmp_path, cfg, restart=False)
    runs.prepare_run_folder(tmp_path, cfg, restart=True)
    [aside] = tmp_path.glob("restarted-*")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoints", "config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [aside.name]
