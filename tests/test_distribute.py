"""tf.distribute: mirrored replicas and two loopback workers match one device under SGD;
step functions trace once per phase; the launcher and the TF_CONFIG checks (a failing or
stuck worker: test_worker_failure.py). Every child process has a hard timeout."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from jsia_tf import config as config_lib
from jsia_tf import launch_local

REPO = pathlib.Path(__file__).resolve().parents[1]

# Mirrored vs one device differ only by float32 sums in another order (synchronised
# batch norm all-reduces its moments, gradients are summed over replicas, triplet
# features are all-gathered). Measured: losses within 1.6e-6 relative, weights within
# 6.5e-6 of the update, batch-norm statistics within 3e-7 of theirs. The alignment terms (Eqs. 11, 12) are KL
# divergences of nearly equal predictions, 1e-5..1e-2 (off by up to 8e-8): compared to
# LOSS_ATOL. Larger learning rates amplify the float noise through the GAN steps (lr
# 0.05 reached 1e-2 of the update), hence lr 0.01. A loss averaged over the per-replica
# batch (gradients x 2) would be off by 100 % in the reported losses at once and by a
# whole update in the weights.
LOSS_RTOL = 1e-4
LOSS_ATOL = 1e-6
WEIGHT_TOLERANCE = 1e-3


SGD_STEPS = REPO / "tests" / "sgd_steps.py"  # the runs compared; its docstring says what and why


@pytest.fixture(scope="session")
def initial_checkpoint(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sgd") / "initial")


@pytest.fixture(scope="session")
def sgd_runs(initial_checkpoint):
    result = subprocess.run([sys.executable, str(SGD_STEPS), "local", initial_checkpoint], cwd=REPO,
                            capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def worker_runs(sgd_runs, initial_checkpoint):
    """{task: (losses, alphas)} of 2 loopback workers taking sgd_runs' steps from the same weights."""
    launcher = "import sys; from jsia_tf import launch_local; sys.exit(launch_local.run_workers(sys.argv[1:], 2, 600))"
    result = subprocess.run([sys.executable, "-c", launcher, sys.executable, str(SGD_STEPS), "worker",
                             initial_checkpoint], cwd=REPO, capture_output=True, text=True, timeout=700,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout[-5000:]
    runs = [json.loads(line) for line in re.findall(r"^\[worker \d\] (\{.*\})$", result.stdout, re.M)]
    return {run["task"]: (run["losses"], run["alphas"]) for run in runs}


@pytest.mark.large
def test_mirrored_sgd_steps_match_one_device_on_the_global_batch(sgd_runs):
    one, mirrored = sgd_runs["losses"]["one_device"], sgd_runs["losses"]["mirrored"]
    assert len(one) == len(mirrored) == 5
    for step, (a, b) in enumerate(zip(one, mirrored)):
        assert set(a) == set(b), step
        if step > 3:  # 2 G pre-training steps, then the joint steps compared (see _SGD_SCRIPT)
            continue
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=LOSS_RTOL, abs=LOSS_ATOL), (step, name)
    assert {"loss/recon", "loss/cycle", "loss/gan", "loss/discriminator", "loss/id_cls", "loss/id_triplet",
            "loss/il", "loss/local"} <= set(one[-1]) and "loss/ui" not in one[-1]
    # Each replica holds one identity: only mining in the global batch finds negatives.
    assert all(step["loss/id_triplet"] > 0.01 for step in one[2:] + mirrored[2:])
    assert sgd_runs["difference"] < WEIGHT_TOLERANCE * sgd_runs["update"]
    # Synchronised batch norm: the moving statistics follow the global batch's moments.
    assert sgd_runs["statistics_difference"] < WEIGHT_TOLERANCE * sgd_runs["statistics_update"]


@pytest.mark.large
def test_two_workers_take_the_sgd_steps_of_one_device_on_the_global_batch(sgd_runs, worker_runs):
    """MultiWorkerMirroredStrategy over loopback: collectives over gRPC instead of
    between local devices, every input of the step function without a device (the
    all-gathered labels of the triplet term)."""
    one = sgd_runs["losses"]["one_device"]
    assert sorted(worker_runs) == [0, 1]
    (losses, alphas), (other_losses, other_alphas) = worker_runs[0], worker_runs[1]
    assert losses == other_losses  # reduced: the same on each worker
    for step, (a, b) in enumerate(zip(one[:4], losses)):
        assert set(a) == set(b), step
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=LOSS_RTOL, abs=LOSS_ATOL), (step, name)
    assert losses[2]["loss/id_triplet"] > 0.01  # mined across the workers
    # Each worker's Eq. 14 alphas are its slice of the global batch's.
    assert alphas + other_alphas == sgd_runs["alphas"]["one_device"]


@pytest.mark.large
def test_mirrored_replicas_draw_the_mixing_ratios_of_one_device(sgd_runs):
    assert len(set(sgd_runs["alphas"]["one_device"])) == 4
    assert sgd_runs["alphas"]["mirrored"] == sgd_runs["alphas"]["one_device"]


@pytest.mark.large
def test_sgd_updated_every_compared_network(sgd_runs):
    """What makes the weight comparison sensitive: every network moved, so a wrong
    gradient scale (x R) would put the weights a whole update (or more) away."""
    assert set(sgd_runs["network_updates"]) == {"alignment", "generator_rgb", "generator_ir", "discriminator_rgb",
                                                 "discriminator_ir"}
    for name, update in sgd_runs["network_updates"].items():
        assert update > 1e-3, name


@pytest.mark.large
def test_each_phase_step_function_traces_once_across_steps_and_a_learning_rate_change(sgd_runs):
    assert sgd_runs["traces"] == {name: {"pretrain_g": 1, "joint": 1} for name in ("one_device", "mirrored")}


_WORKER_1_FAILS = ("import json, os, sys, time\n"
                   "index = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
                   "print('worker', index, 'of', len(json.loads(os.environ['TF_CONFIG'])['cluster']['worker']))\n"
                   "sys.stdout.flush()\n"
                   "time.sleep(0 if index else 300)\n"
                   "sys.exit(3 if index else 0)\n")


def test_launcher_stops_every_worker_when_one_fails(capfd):
    # The 120 s limit only guards against a broken launcher: worker 1 fails at once.
    status = launch_local.run_workers([sys.executable, "-c", _WORKER_1_FAILS], 2, timeout_s=120)
    assert status == 3
    out = capfd.readouterr().out
    assert "[worker 0] worker 0 of 2" in out and "[worker 1] worker 1 of 2" in out


def test_launcher_timeout_stops_workers_that_wait_for_a_peer(capfd):
    status = launch_local.run_workers([sys.executable, "-c", "import time; time.sleep(300)"], 2, timeout_s=1)
    assert status == launch_local.TIMEOUT_EXIT_CODE
    assert "--timeout_s=1 passed; stopping every worker" in capfd.readouterr().err


def test_loopback_cluster_configs_name_distinct_free_ports_and_each_task():
    configs = [json.loads(c) for c in launch_local.tf_configs(3)]
    workers = configs[0]["cluster"]["worker"]
    assert len(set(workers)) == 3 and all(w.startswith("127.0.0.1:") for w in workers)
    assert [c["cluster"]["worker"] for c in configs] == [workers] * 3
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]


@pytest.mark.parametrize("raw, problem", [
    (None, "not set"),
    ("{cluster", "not JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'no "cluster" object'),
    ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', 'cluster role "ps"'),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', '"host:port" addresses'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', '"task" has no "type"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', '"index" 2 is not in 0..1'),
])
def test_bad_tf_config_names_tf_config_and_the_expected_form(raw, problem):
    from jsia_tf import distribute

    with pytest.raises(distribute.ClusterError) as error:
        distribute.read_tf_config(raw)
    message = str(error.value)
    assert message.startswith(f"TF_CONFIG={raw!r}: ") and problem in message
    assert '"task": {"type": "worker", "index": 0}' in message


def test_tf_config_chief_is_worker_0_unless_there_is_a_chief_task():
    from jsia_tf import distribute

    spec = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    assert distribute.read_tf_config(json.dumps(spec)) == ("worker", 1, spec["cluster"])


def test_multi_worker_without_tf_config_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "jsia_tf.train", f"--flagfile={REPO / 'configs' / 'smoke.flags'}",
         f"--data_dir={tmp_path / 'data'}", f"--run_dir={tmp_path / 'run'}", "--strategy=multi_worker"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "TF_CONFIG=None: not set; --strategy=multi_worker expects JSON like" in result.stderr
    assert not (tmp_path / "run").exists()


def test_batches_must_split_into_whole_identities_per_replica():
    from jsia_tf import distribute

    data = config_lib.DataConfig(data_dir="d", num_ids=4, gan_num_ids=3)
    distribute.check_replica_split(data, 1)
    with pytest.raises(config_lib.ConfigError, match=r"--gan_num_ids=3: expected a multiple of the 2 replicas"):
        distribute.check_replica_split(data, 2)
    with pytest.raises(config_lib.ConfigError, match=r"--num_ids=4: expected a multiple of the 3 replicas"):
        distribute.check_replica_split(data, 3)
