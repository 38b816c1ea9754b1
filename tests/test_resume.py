"""A training job killed with SIGKILL resumes from its last checkpoint when started again."""

import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

REPO = pathlib.Path(__file__).resolve().parents[1]
# The smoke preset's pre-training phase only (one step function to trace): 4 steps.
TOTAL_STEPS = 4
FIRST_CHECKPOINT_TIMEOUT_S = 180
RUN_TIMEOUT_S = 300


def _command(data_dir, run_dir):
    return [sys.executable, "-m", "jsia_tf.train", f"--flagfile={REPO / 'configs' / 'smoke.flags'}",
            f"--data_dir={data_dir}", f"--run_dir={run_dir}", "--pretrain_epochs=1", "--joint_epochs=0",
            f"--steps_per_epoch={TOTAL_STEPS}", "--checkpoint_every=1", "--log_every=1", "--image_every=0"]


def _checkpoint_step(checkpoint_dir):
    """The step of the newest checkpoint listed in ``checkpoint_dir`` (0: none yet)."""
    state = tf.train.get_checkpoint_state(str(checkpoint_dir))
    return int(state.model_checkpoint_path.rsplit("-", 1)[1]) if state else 0


def _loss_steps(events_file):
    events = event_accumulator.EventAccumulator(str(events_file), size_guidance={"tensors": 0})
    events.Reload()
    return sorted(event.step for event in events.Tensors("loss/total"))


@pytest.mark.large
def test_sigkilled_run_resumes_from_its_last_checkpoint(tmp_path):
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    command = _command(data_dir, run_dir)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + FIRST_CHECKPOINT_TIMEOUT_S
            while _checkpoint_step(run_dir / "checkpoints") == 0:
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within the timeout"
                time.sleep(0.2)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    killed_at = _checkpoint_step(run_dir / "checkpoints")
    assert 0 < killed_at < TOTAL_STEPS
    config = (run_dir / "config.json").read_bytes()
    first_events = list(run_dir.glob("events.out.tfevents.*"))

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = re.search(r"Resumed from (\S+) \(step (\d+)\)", second.stderr)
    assert resumed and resumed.group(1).endswith(f"ckpt-{killed_at}") and int(resumed.group(2)) == killed_at
    assert f"Training steps {killed_at}..{TOTAL_STEPS} of {TOTAL_STEPS}" in second.stderr

    assert _checkpoint_step(run_dir / "checkpoints") == TOTAL_STEPS
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE") == TOTAL_STEPS
    assert set(json.loads((run_dir / "metrics.json").read_text())) == {"regdb_v2t", "regdb_t2v", "regdb_intra_rgb", "regdb_intra_ir"}
    [version] = (run_dir / "export").iterdir()
    assert json.loads((version / "assets" / "jsia_metadata.json").read_text())["checkpoint"] == latest
    assert (run_dir / "config.json").read_bytes() == config

    # The killed run's summaries up to its checkpoint stay; the resumed run's start after it.
    [first_file] = first_events
    [second_file] = set(run_dir.glob("events.out.tfevents.*")) - set(first_events)
    assert set(range(1, killed_at + 1)) <= set(_loss_steps(first_file))
    assert _loss_steps(second_file) == list(range(killed_at + 1, TOTAL_STEPS + 1))
