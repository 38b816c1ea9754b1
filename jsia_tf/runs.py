"""A training run's folder and data: the synthetic dataset generated on demand, resuming
from the newest checkpoint, the evaluation history, and rebuilding a finished run's
networks (``export``, ``analyze``).
"""

import fcntl
import json
import os
import pathlib

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
    return pipeline.load_dataset(data_cfg.dataset, root, trial=data_cfg.trial)


def restore_or_start(trainer, manager, checkpoint_dir=None):
    """Restores the newest checkpoint of ``checkpoint_dir`` (default: the manager's) if any;
    returns the step to continue from."""
    latest = tf.train.latest_checkpoint(str(checkpoint_dir)) if checkpoint_dir else manager.latest_checkpoint
    if latest:
        manager.checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("Resumed from %s (step %d)", latest, int(trainer.step.numpy()))
        for group, (saved, wanted) in trainer.restored_settings_differ().items():
            logging.warning("%s: the checkpoint was trained with (lr, beta1, beta2, weight_decay) %s; "
                            "continuing with this start's %s", group, saved, wanted)
    return int(trainer.step.numpy())


EVAL_HISTORY = "eval_history.json"


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
      checkpoint: a checkpoint prefix; default the newest in ``run_dir/checkpoints``.
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
    checkpoint = checkpoint or tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if not checkpoint or not tf.io.gfile.exists(checkpoint + ".index"):
        raise ValueError(f"--checkpoint={checkpoint!r}: no checkpoint of {run_dir} to load")
    keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
    trainer = trainer_lib.Trainer(cfg, num_classes)
    trainer.checkpoint().restore(checkpoint).assert_existing_objects_matched()
    return trainer, checkpoint
