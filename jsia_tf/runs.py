"""A training run's folder and data: the synthetic dataset generated on demand, resuming
from the newest checkpoint, the evaluation history, and rebuilding a finished run's
networks (``export``, ``analyze``).
"""

import fcntl
import json
import os
import pathlib
import re
import time

from absl import logging
import keras
import tensorflow as tf

from jsia_tf import config as config_lib
from jsia_tf import trainer as trainer_lib
from jsia_tf.data import pipeline, synthetic


def _synthetic_metadata(root):
    """The ``synthetic.json`` of a generated dataset folder, None if there is none (or unreadable)."""
    try:
        return json.loads((root / synthetic.METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None


def prepare_dataset(data_cfg):
    """Generates the synthetic dataset if the preset asks for it, then reads it.

    The dataset is generated when ``data_dir`` is empty or holds a synthetic dataset
    whose ``synthetic.json`` differs from what the flags ask for (another renderer
    version, size, seed, number of ids or test persons): a cached demo dataset always
    matches the code. A non-empty folder without ``synthetic.json`` is never overwritten.

    Every training and test image is decoded once before training starts
    (:func:`jsia_tf.data.pipeline.check_images`, its verdict cached beside the data).

    Workers that share ``--data_dir`` (one host, or a shared filesystem) take turns
    through an exclusive lock on ``.<data_dir name>.lock`` beside it: the first one
    generates, the others then find the dataset. Workers on separate disks each
    generate the same files (generation is seeded).
    """
    root = pathlib.Path(data_cfg.data_dir)
    if data_cfg.synthetic_ids:
        root.parent.mkdir(parents=True, exist_ok=True)
        # Rendered at twice the network input so that, as with real data, the
        # pipeline resizes what it reads.
        wanted = synthetic.metadata(data_cfg.dataset, data_cfg.synthetic_ids, data_cfg.synthetic_seed,
                                    2 * data_cfg.height, 2 * data_cfg.width, data_cfg.synthetic_test_ids)
        with open(root.parent / f".{root.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            found = _synthetic_metadata(root)
            if found != wanted:
                if found is None and root.exists() and any(root.iterdir()):
                    raise config_lib.ConfigError(
                        "data_dir", str(root), f"an empty folder or a synthetic dataset (no "
                        f"{synthetic.METADATA_FILE} here, so it is not regenerated: remove it, or pass "
                        "--synthetic_ids=0 to read it as it is)")
                logging.info("Generating a synthetic %s dataset (%d ids) in %s%s", data_cfg.dataset,
                             data_cfg.synthetic_ids, root, "" if found is None else f" (it held {found})")
                try:
                    synthetic.generate(root, data_cfg.dataset, data_cfg.synthetic_ids, data_cfg.synthetic_seed,
                                       height=2 * data_cfg.height, width=2 * data_cfg.width,
                                       test_ids=data_cfg.synthetic_test_ids, overwrite=found is not None,
                                       num_workers=os.cpu_count() or 1)
                except ValueError as err:
                    raise config_lib.ConfigError("synthetic_ids", data_cfg.synthetic_ids, str(err)) from None
    return pipeline.load_dataset(data_cfg.dataset, root, trial=data_cfg.trial, verify=True)


class RunFolderError(Exception):
    """A run folder the command cannot use as asked; the message names the folder or file and what to do."""


LOCK_FILE = "train.lock"


def lock_run_folder(run_dir):
    """Takes ``run_dir``'s lock: an exclusive ``fcntl`` lock on :data:`LOCK_FILE`, which holds
    the holder's PID. Returns the open lock file; the lock lasts while it is open.

    An OS lock, not a marker file: the kernel releases it when the process ends, however
    it ends (``kill -9`` too), so there is nothing stale to clean up after a crash.
    Raises:
      RunFolderError: another process holds it (its PID named).
    """
    lock = open(pathlib.Path(run_dir) / LOCK_FILE, "a+")  # pylint: disable=consider-using-with
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise RunFolderError(f"--run_dir={run_dir} is in use by another training (PID {holder}): wait for it to "
                             "end, or pass another --run_dir") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


EVAL_HISTORY = "eval_history.json"  # the test-set metrics of every evaluation of a run, by step
# Files a run writes once it has trained and evaluated.
_RECORDS = ("metrics.json", EVAL_HISTORY)
_RESTARTED = "restarted-"
RESTART_ADVICE = "pass --restart to start the run over (its files are moved aside), or another --run_dir"


def prepare_run_folder(run_dir, cfg, restart):
    """Checks, before any file of ``run_dir`` changes, that this start may use it.

    With ``restart`` the folder's previous contents are moved into
    ``restarted-<UTC time>/`` (nothing is deleted) and the run starts at step 0.
    Otherwise a run folder with recorded work is never started over silently: records
    (metrics, the evaluation history, a checkpoint state file that lists steps) without
    any checkpoint on disk are refused, and a config.json whose networks or identities
    differ from ``cfg`` (:func:`jsia_tf.config.resume_conflicts`) is one error naming
    every differing flag.
    Raises:
      RunFolderError: the start would lose work or mismatch the run's checkpoints.
    """
    run_dir = pathlib.Path(run_dir)
    if restart:
        previous = sorted(p.name for p in run_dir.iterdir()
                          if p.name != LOCK_FILE and not p.name.startswith(_RESTARTED))
        if previous:
            aside = run_dir / (_RESTARTED + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
            aside.mkdir()
            for name in previous:
                (run_dir / name).rename(aside / name)
            logging.warning("--restart: moved %s into %s; starting at step 0", ", ".join(previous), aside)
        return
    checkpoints = checkpoints_on_disk(run_dir / "checkpoints")
    records = [name for name in _RECORDS if (run_dir / name).exists()]
    state = tf.train.get_checkpoint_state(str(run_dir / "checkpoints"))
    if state and state.all_model_checkpoint_paths:  # it names steps the run saved
        listed = ", ".join(os.path.basename(path) for path in state.all_model_checkpoint_paths)
        records.append(f"checkpoints/checkpoint (listing {listed})")
    if records and not checkpoints:
        raise RunFolderError(f"--run_dir={run_dir} holds {', '.join(records)} of a run that trained, but no "
                             f"checkpoint to resume from in {run_dir / 'checkpoints'}: {RESTART_ADVICE}")
    saved_path = run_dir / "config.json"
    if checkpoints and saved_path.exists():
        try:
            saved = config_lib.Config.load(saved_path)
        except ValueError as err:
            raise RunFolderError(f"{err}: the flags cannot be checked against the run's checkpoints; "
                                 f"{RESTART_ADVICE}") from None
        conflicts = config_lib.resume_conflicts(saved, cfg)
        if conflicts:
            raise RunFolderError(f"--run_dir={run_dir} has checkpoints trained with other values ({saved_path}): "
                                 f"{'; '.join(conflicts)}. Pass the run's values, or {RESTART_ADVICE}")


# CheckpointManager's file names: <prefix>.index and <prefix>.data-<shard>-of-<shards>.
_CHECKPOINT_FILE = re.compile(r"^(ckpt-(\d+))\.(index|data-\d+-of-\d+)$")


def checkpoints_on_disk(checkpoint_dir):
    """The checkpoint prefixes whose files are in ``checkpoint_dir``, newest (highest step) first.

    Read from the files themselves, not from the ``checkpoint`` state file: that file
    may name a newest checkpoint whose files were deleted, and then
    ``tf.train.latest_checkpoint`` returns None and a run would start over at step 0.
    """
    if not tf.io.gfile.isdir(str(checkpoint_dir)):
        return []
    steps = {}
    for name in tf.io.gfile.listdir(str(checkpoint_dir)):
        match = _CHECKPOINT_FILE.match(name)
        if match:
            steps[match.group(1)] = int(match.group(2))
    return [os.path.join(str(checkpoint_dir), prefix) for prefix in sorted(steps, key=steps.get, reverse=True)]


def _why(err):
    """What a failed restore says, in one line."""
    return pipeline.op_error_line(str(getattr(err, "message", None) or err)) or type(err).__name__


def _load_problem(checkpoint, prefix):
    """Restores ``prefix`` into ``checkpoint``; None if it loaded, else what failed, naming the file."""
    index = prefix + ".index"
    if not tf.io.gfile.exists(index):
        return f"{index}: missing (its data files are there)"
    try:
        reader = tf.train.load_checkpoint(prefix)  # reads the index alone
    except (tf.errors.OpError, ValueError) as err:
        return f"{index}: not a checkpoint index ({_why(err)})"
    del reader
    data = sorted(tf.io.gfile.glob(prefix + ".data-*")) or [prefix + ".data-00000-of-00001"]
    try:
        checkpoint.restore(prefix).assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as err:
        return f"{', '.join(data)}: the values do not load ({_why(err)})"
    return None


def restore_newest(checkpoint, checkpoint_dir):
    """Restores the newest checkpoint of ``checkpoint_dir`` that loads into ``checkpoint``.

    A checkpoint that does not load (a truncated or overwritten index or data file) is
    named in a warning with the file at fault, and the next older one is tried: a
    broken newest checkpoint costs the steps since the one before, not the run.
    Returns the restored prefix, or None if the folder holds no checkpoint.
    Raises:
      RunFolderError: there are checkpoints and none loads (each one's problem listed).
    """
    on_disk = checkpoints_on_disk(checkpoint_dir)
    state = tf.train.get_checkpoint_state(str(checkpoint_dir)) if on_disk else None
    gone = [path for path in (state.all_model_checkpoint_paths if state else []) if path not in on_disk]
    if gone:
        logging.warning("The files of checkpoint(s) %s, listed in %s, are gone", ", ".join(gone),
                        os.path.join(str(checkpoint_dir), "checkpoint"))
    problems = []
    for prefix in on_disk:
        problem = _load_problem(checkpoint, prefix)
        if problem is None:
            if problems:
                logging.warning("%s is the newest checkpoint that loads: the %d newer one(s) above did not",
                                prefix, len(problems))
            return prefix
        logging.warning("Checkpoint %s does not load: %s; trying the next older one", prefix, problem)
        problems.append(problem)
    if problems:
        raise RunFolderError(f"no checkpoint in {checkpoint_dir} loads: {'; '.join(problems)}")
    return None


def restore_or_start(trainer, checkpoint_dir):
    """Restores the newest checkpoint of ``checkpoint_dir`` that loads (:func:`restore_newest`);
    returns the step to continue from."""
    latest = restore_newest(trainer.checkpoint(), checkpoint_dir)
    if latest:
        logging.info("Resumed from %s (step %d)", latest, int(trainer.step.numpy()))
        for group, (saved, wanted) in trainer.restored_settings_differ().items():
            logging.warning("%s: the checkpoint was trained with (lr, beta1, beta2, weight_decay) %s; "
                            "continuing with this start's %s", group, saved, wanted)
    return int(trainer.step.numpy())


def record_evaluation(path, step, metrics, generation=None):
    """Adds (or, after a resume, replaces) ``step``'s metrics in the run's eval history, with
    module G's ground-truth numbers (``jsia_tf.eval.ground_truth``) under "generation" when given."""
    history = json.loads(path.read_text()) if path.exists() else []
    entry = {"step": step, "metrics": metrics, **({"generation": generation} if generation is not None else {})}
    history = [e for e in history if e["step"] != step] + [entry]
    path.write_text(json.dumps(sorted(history, key=lambda entry: entry["step"]), indent=1) + "\n")


# What a run needs besides config.json to rebuild its networks (the classifier's size).
DATASET_SUMMARY = "dataset.json"


def write_dataset_summary(run_dir, dataset):
    """Writes the run's :data:`DATASET_SUMMARY`, which :func:`load_run` reads."""
    summary = {"name": dataset.name, "num_classes": dataset.num_classes, "train_rgb": len(dataset.train_rgb),
               "train_ir": len(dataset.train_ir), "test": len(dataset.test)}
    (pathlib.Path(run_dir) / DATASET_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")


def load_run(run_dir, checkpoint=None):
    """Rebuilds a training run's networks from ``run_dir`` with a checkpoint's weights.

    The one way to load a trained run: ``export.export_run`` and ``analyze`` use it.
    Sets the run's mixed-precision policy (globally) before building the networks.

    Args:
      run_dir: a ``python -m jsia_tf.train`` run folder (config.json, dataset.json,
        checkpoints/).
      checkpoint: a checkpoint prefix; default the newest in ``run_dir/checkpoints`` that loads
        (:func:`restore_newest`: a broken one is named and the next older one tried).
    Returns:
      ``(trainer, checkpoint)``: a :class:`jsia_tf.trainer.Trainer` with the restored
      weights, and the checkpoint prefix they come from.
    Raises:
      ValueError: the run folder or checkpoint is missing or not a jsia_tf run.
    """
    cfg = config_lib.Config.load(os.path.join(run_dir, "config.json"))
    summary_path = os.path.join(run_dir, DATASET_SUMMARY)
    try:
        with open(summary_path) as f:
            num_classes = int(json.load(f)["num_classes"])
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{summary_path}: expected the run's dataset summary with num_classes ({err})") from err
    keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
    trainer = trainer_lib.Trainer(cfg, num_classes)
    if checkpoint:
        problem = _load_problem(trainer.checkpoint(), checkpoint)
        if problem:
            raise ValueError(f"--checkpoint={checkpoint}: {problem}")
        return trainer, checkpoint
    try:
        checkpoint = restore_newest(trainer.checkpoint(), os.path.join(run_dir, "checkpoints"))
    except RunFolderError as err:
        raise ValueError(str(err)) from None
    if not checkpoint:
        raise ValueError(f"--checkpoint=None: no checkpoint of {run_dir} to load")
    return trainer, checkpoint
