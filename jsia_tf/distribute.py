"""Training over several devices or hosts (docs/DISTRIBUTED.md): the strategy from the
flags and ``TF_CONFIG``, which process is the chief, each replica's share of the input,
the values of every replica gathered for a loss, the check that the workers resumed
together, and how a failed worker ends the run.
"""

import hashlib
import json
import os
import pathlib
import sys
import threading
import time

from absl import app, logging
import numpy as np
import tensorflow as tf

from jsia_tf import config as config_lib
from jsia_tf.data import pipeline


# What --strategy=multi_worker expects in TF_CONFIG (docs/DISTRIBUTED.md has a 2-host example).
_TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host0:2222", "host1:2222"]}, '
                      '"task": {"type": "worker", "index": 0}}')


class ClusterError(ValueError):
    """TF_CONFIG does not describe a cluster and this process's task in it."""


class StalledError(RuntimeError):
    """No training step finished within --collective_timeout_s."""


def read_tf_config(raw):
    """(task type, task index, cluster) of a TF_CONFIG value, validated for MultiWorkerMirroredStrategy.

    Raises:
      ClusterError: naming TF_CONFIG, what is wrong and what was expected.
    """
    def fail(problem):
        raise ClusterError(f"TF_CONFIG={raw!r}: {problem}; --strategy=multi_worker expects JSON like "
                           f"{_TF_CONFIG_EXAMPLE}, the same cluster on every worker and its own task")

    if not raw:
        fail("not set")
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        fail(f"not JSON ({err})")
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        fail('no "cluster" object')
    for role, addresses in cluster.items():
        if role not in ("chief", "worker"):
            fail(f'cluster role "{role}" (MultiWorkerMirroredStrategy runs "chief" and "worker" tasks)')
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses)):
            fail(f'cluster "{role}" is not a list of "host:port" addresses')
    if not isinstance(task, dict) or task.get("type") not in cluster:
        fail(f'"task" has no "type" among the cluster\'s roles {sorted(cluster)}')
    index = task.get("index")
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        fail(f'"task" "index" {index!r} is not in 0..{len(cluster[task["type"]]) - 1}')
    return task["type"], index, cluster


def is_chief(strategy):
    """Whether this process writes the run folder: always, except on the non-chief workers of
    a multi-worker run (the chief is task "chief", or worker 0 when there is none)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver  # built from the TF_CONFIG make_strategy validated
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def make_strategy(train_cfg):
    """The run's tf.distribute strategy; call before any TensorFlow op.

    Raises:
      ConfigError: --cpu_replicas with --strategy=multi_worker.
      ClusterError: --strategy=multi_worker without a valid TF_CONFIG.
    """
    if train_cfg.strategy == "default":
        return tf.distribute.get_strategy()
    if train_cfg.strategy == "multi_worker":
        if train_cfg.cpu_replicas:
            raise config_lib.ConfigError("cpu_replicas", train_cfg.cpu_replicas,
                                         "0 with --strategy=multi_worker (a worker uses its GPUs or its CPU; "
                                         "start more workers instead)")
        read_tf_config(os.environ.get("TF_CONFIG"))
        # AUTO: NCCL all-reduce between GPUs, RING (gRPC) between CPUs. No timeout here:
        # TensorFlow's per-collective timeout starts a thread per collective run that sleeps
        # for the whole timeout; --collective_timeout_s is ProgressWatchdog's.
        communication = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication)
    if train_cfg.cpu_replicas:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * train_cfg.cpu_replicas)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(train_cfg.cpu_replicas)])
    return tf.distribute.MirroredStrategy()


def from_all_replicas(value):
    """``value`` [b, ...] of every replica, concatenated in replica order: [R b, ...].

    ``ReplicaContext.all_gather`` is differentiable (its gradient sums over replicas
    and hands each replica its slice), so a loss of the gathered tensor trains every
    replica's share as one device would. One replica: ``value`` itself.

    ``all_gather`` sends to the device of the tensor it is given; an input of the step
    function (e.g. the labels) has none under MultiWorkerMirroredStrategy ("destinations
    can not be empty"), so the value is first copied by an op created in the replica's
    device scope.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_gather(tf.identity(value), axis=0)


def check_replica_split(data_cfg, num_replicas):
    """Raises ConfigError unless both batches split into whole identities over ``num_replicas``."""
    for flag in ("num_ids", "gan_num_ids"):
        if getattr(data_cfg, flag) % num_replicas:
            raise config_lib.ConfigError(flag, getattr(data_cfg, flag),
                                         f"a multiple of the {num_replicas} replicas: each replica trains on "
                                         "whole identities of the global batch")


def training_batches(dataset, cfg, strategy, start_step):
    """Iterator of distributed (re-ID batch, generation batch) pairs from step ``start_step`` on
    (:func:`jsia_tf.data.pipeline.training_streams`).

    Each input pipeline (one per worker) draws the same global batches and reads only its
    own replicas' identities; its per-replica batches go to its local replicas in turn.
    """
    def worker_batches(context):
        local = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * local  # replica ids are worker-major
        return pipeline.training_streams(dataset, cfg.data, start_step, context.num_replicas_in_sync,
                                         range(first, first + local))

    return iter(strategy.distribute_datasets_from_function(worker_batches))


def check_workers_agree(strategy, trainer):
    """Raises ClusterError unless every worker restored the same step.

    A worker that cannot read the chief's checkpoints would start over and then wait
    forever in a collective for steps the others never take.
    """
    def mean_over_replicas(value):
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(tf.identity, args=(value,)), axis=None)

    step = tf.cast(trainer.step, tf.float32)  # exact below 2**24 steps
    mean = mean_over_replicas(step)
    if mean_over_replicas(tf.square(step - mean)) > 0:  # the same on every worker: all stop
        raise ClusterError(f"the workers resumed from different steps (this one {int(step)}, mean {float(mean):g}): "
                           "every worker must read the chief's --run_dir/checkpoints (a shared filesystem)")


def weights_digest(trainer):
    """sha256 of every network weight (trainable and batch-norm statistics), networks by name.

    Logged at the end of training by every worker: equal digests mean equal replicas.
    """
    digest = hashlib.sha256()
    for _, model in sorted(trainer.model.networks.items()):
        for weight in model.weights:
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


class ProgressWatchdog:
    """Ends this worker (:func:`end_worker`) when training makes no progress for
    ``cfg.train.collective_timeout_s`` seconds while it is armed (0: never).

    A worker waiting in a collective for a peer that is stuck without dying (so the
    coordination service still sees it) would wait forever. TensorFlow's own bound,
    ``CommunicationOptions.timeout_seconds``, starts for every collective it runs a
    thread that sleeps for the whole timeout: a joint step runs hundreds of collectives
    (synchronised batch norm in every layer call), so a 1,800 s timeout kept tens of
    thousands of sleeping threads and two CPU workers on one host hit the pid limit
    and aborted (docs/DISTRIBUTED.md). One thread here watches the training loop's
    heartbeats instead (:meth:`beat`, after each step and each copy of step results to
    the host, where a worker blocks when a peer is late).

    Use as a context manager: armed inside, disarmed outside.
    """

    def __init__(self, cfg):
        self._cfg = cfg
        self._timeout = cfg.train.collective_timeout_s
        self._last = None  # time.monotonic() of the last beat; None: disarmed
        if self._timeout:
            threading.Thread(target=self._watch, name="jsia_watchdog", daemon=True).start()

    def beat(self):
        """Progress: the timeout counts again from now (and arms the watchdog)."""
        self._last = time.monotonic()

    def disarm(self):
        """No limit until the next :meth:`beat` (e.g. during the chief's own evaluation)."""
        self._last = None

    def __enter__(self):
        self.beat()
        return self

    def __exit__(self, *exc_info):
        self.disarm()

    def _watch(self):
        while True:
            time.sleep(min(1.0, self._timeout / 4))
            last = self._last
            if last is not None and time.monotonic() - last > self._timeout:
                end_worker(StalledError(), self._cfg)


def end_worker(err, cfg):
    """Ends this worker of a multi-worker run now, with ``err``'s message and exit status 1.

    ``os._exit`` skips the interpreter's shutdown, which waits on TensorFlow's threads
    (the input pipeline's generator, the coordination-service agent) and is where a
    failed two-worker run was once reported to hang. The other workers learn that a
    peer is gone from the coordination service (its heartbeats stop; their next
    collective fails within seconds) and end here too. A peer that is stuck but alive
    is caught by :class:`ProgressWatchdog` (``--collective_timeout_s``).
    """
    if isinstance(err, SystemExit):
        message = str(err.code)
    elif isinstance(err, app.UsageError):
        message = f"error: {err}"
    elif isinstance(err, StalledError):
        message = (f"error: no training step finished in --collective_timeout_s={cfg.train.collective_timeout_s:g} "
                   "s: another worker is stuck (this one waits for it in a collective), or the timeout is below the "
                   "longest pause between steps")
    elif isinstance(err, (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError)):
        message = (f"error: another worker failed or cannot be reached ({type(err).__name__}); "
                   "its own output has the cause")
    else:
        logging.exception("This worker failed")
        message = f"error: {type(err).__name__}: {err}"
    checkpoints = tf.train.latest_checkpoint(str(pathlib.Path(cfg.run_dir) / "checkpoints"))
    print(f"{message}\nEnding this worker. Restart every worker with the same command to resume from "
          f"{checkpoints or 'the start (no checkpoint was written yet)'}.", file=sys.stderr)
    end_process(1)


def end_process(status):
    """Flushes the logs and ends the process with ``status`` at once (``os._exit``: no
    interpreter shutdown; see :func:`end_worker`)."""
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access
