"""``python -m jsia_tf.train --flagfile=configs/demo.flags``: the main job.

Flags are defined here and turned into one frozen :class:`jsia_tf.config.Config`.
The JSIA networks (modules G, V and F of Sec. 3) and their joint training steps
land with the model issue; until then a run exercises everything around them on
the configured dataset: it generates the synthetic dataset when the preset asks
for it, streams the cross-modal P x K training batches, and evaluates a
training-free pixel baseline with the dataset's official protocol, with
TensorBoard scalars and image grids in ``--run_dir``.
"""

import json
import pathlib
import sys
import time

from absl import app, flags, logging
import numpy as np
import tensorflow as tf

from jsia_tf import config as config_lib
from jsia_tf.data import pipeline, records, synthetic
from jsia_tf.eval import metrics as metrics_lib
from jsia_tf.eval import protocols

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run folder: config.json, TensorBoard events, metrics.")
_DATASET = flags.DEFINE_enum("dataset", "regdb", config_lib.DATASETS, "Dataset layout and protocol.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset root folder.")
_TRIAL = flags.DEFINE_integer("trial", 1, "RegDB split, 1..10.")
_SYNTHETIC_IDS = flags.DEFINE_integer(
    "synthetic_ids", 0, "If > 0 and --data_dir holds no dataset, generate a synthetic one with this many ids.")
_HEIGHT = flags.DEFINE_integer("height", 256, "Input height (paper: 256).")
_WIDTH = flags.DEFINE_integer("width", 128, "Input width (paper: 128).")
_NUM_IDS = flags.DEFINE_integer("num_ids", 16, "P: identities per re-ID batch (paper: 16).")
_NUM_INSTANCES = flags.DEFINE_integer("num_instances", 4, "K: images per identity and modality (paper: 4).")
_GAN_NUM_IDS = flags.DEFINE_integer("gan_num_ids", 3, "Identities per generation batch.")
_GAN_NUM_INSTANCES = flags.DEFINE_integer("gan_num_instances", 3, "Images per identity and modality, generation.")
_FLIP = flags.DEFINE_bool("flip", True, "Random horizontal flip.")
_PAD = flags.DEFINE_integer("pad", 10, "Zero padding before the random crop (0: no crop).")
_RANDOM_ERASING = flags.DEFINE_float("random_erasing", 0.5, "Random erasing probability.")
_CHANNEL_AUG = flags.DEFINE_float("channel_aug", 0.0, "Channel augmentation probability (RGB images).")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds sampling and augmentation.")
_SYSU_MODES = flags.DEFINE_list("sysu_modes", list(config_lib.SYSU_MODES), "SYSU-MM01 search modes.")
_SYSU_SHOTS = flags.DEFINE_list("sysu_shots", [str(s) for s in config_lib.SYSU_SHOTS], "SYSU-MM01 gallery shots.")
_SYSU_RAND_PERM = flags.DEFINE_string("sysu_rand_perm", "", "Official rand_perm_cam.mat (default: seeded galleries).")
_TRIALS = flags.DEFINE_integer("trials", 10, "SYSU-MM01 gallery draws averaged.")
_REGDB_DIRECTIONS = flags.DEFINE_list(
    "regdb_directions", list(config_lib.REGDB_DIRECTIONS), "RegDB directions: v2t (visible query), t2v.")
_EVAL_BATCH_SIZE = flags.DEFINE_integer("eval_batch_size", 64, "Images per embedding batch.")
_STEPS = flags.DEFINE_integer("steps", 10, "Training steps of this run.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 5, "Steps between progress lines and scalar summaries.")


def _int_list(flag, values):
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise config_lib.ConfigError(flag, values, "comma-separated integers") from None


def config_from_flags():
    """The one place where flags become the run's Config."""
    data = config_lib.DataConfig(
        dataset=_DATASET.value, data_dir=_DATA_DIR.value or "", trial=_TRIAL.value,
        synthetic_ids=_SYNTHETIC_IDS.value, height=_HEIGHT.value, width=_WIDTH.value,
        num_ids=_NUM_IDS.value, num_instances=_NUM_INSTANCES.value,
        gan_num_ids=_GAN_NUM_IDS.value, gan_num_instances=_GAN_NUM_INSTANCES.value,
        flip=_FLIP.value, pad=_PAD.value, random_erasing=_RANDOM_ERASING.value,
        channel_aug=_CHANNEL_AUG.value, seed=_SEED.value)
    eval_cfg = config_lib.EvalConfig(
        sysu_modes=tuple(_SYSU_MODES.value), sysu_shots=_int_list("sysu_shots", _SYSU_SHOTS.value),
        sysu_rand_perm=_SYSU_RAND_PERM.value, trials=_TRIALS.value,
        regdb_directions=tuple(_REGDB_DIRECTIONS.value), batch_size=_EVAL_BATCH_SIZE.value)
    return config_lib.Config(run_dir=_RUN_DIR.value or "", data=data, eval=eval_cfg,
                             steps=_STEPS.value, log_every=_LOG_EVERY.value)


def prepare_dataset(data_cfg):
    """Generates the synthetic dataset if the preset asks for it, then reads it."""
    root = pathlib.Path(data_cfg.data_dir)
    if data_cfg.synthetic_ids and not (root.exists() and any(root.iterdir())):
        logging.info("Generating a synthetic %s dataset (%d ids) in %s", data_cfg.dataset,
                     data_cfg.synthetic_ids, root)
        # Rendered at twice the network input so that, as with real data, the
        # pipeline resizes what it reads.
        try:
            synthetic.generate(root, data_cfg.dataset, data_cfg.synthetic_ids, data_cfg.seed,
                               height=2 * data_cfg.height, width=2 * data_cfg.width)
        except ValueError as err:
            raise config_lib.ConfigError("synthetic_ids", data_cfg.synthetic_ids, str(err)) from None
    return pipeline.load_dataset(data_cfg.dataset, root, trial=data_cfg.trial)


def pixel_baseline_features(images, cfg):
    """A training-free floor: gray 16 x 8 thumbnails, mean-free, as [N, 128] features.

    Colour is dropped (it does not exist in IR), so what remains is silhouette and
    intensity layout, the information a hand-crafted cross-modal baseline has.
    """
    features = []
    for batch in pipeline.eval_dataset(images, cfg.data.height, cfg.data.width, cfg.eval.batch_size):
        gray = tf.reduce_mean(batch, axis=-1, keepdims=True)  # [B, H, W, 1]
        thumb = tf.image.resize(gray, (16, 8), method="area")  # [B, 16, 8, 1]
        flat = tf.reshape(thumb, (tf.shape(thumb)[0], -1))
        features.append((flat - tf.reduce_mean(flat, axis=1, keepdims=True)).numpy())
    return np.concatenate(features)


def run_training_stream(dataset, cfg, writer):
    """Streams cfg.steps P x K batches; logs images/s and writes an image grid."""
    data = cfg.data
    augment = pipeline.AugmentConfig(flip=data.flip, pad=data.pad, random_erasing=data.random_erasing,
                                     channel_aug=data.channel_aug)
    stream = pipeline.train_dataset(dataset, data.num_ids, data.num_instances, data.height, data.width,
                                    seed=data.seed, augment=augment)
    images_per_step = 2 * data.num_ids * data.num_instances
    start = time.perf_counter()
    for step, batch in enumerate(stream.take(cfg.steps), start=1):
        with writer.as_default(step=step):
            if step == 1:
                for modality in ("rgb", "ir"):
                    tf.summary.image(f"batch/{modality}", pipeline.denormalize(batch[modality]),
                                     max_outputs=data.num_instances * 2)
            if step % cfg.log_every == 0 or step == cfg.steps:
                rate = step * images_per_step / (time.perf_counter() - start)
                tf.summary.scalar("input/images_per_second", rate)
                eta = (cfg.steps - step) * images_per_step / rate
                logging.info("step %d/%d  input %.1f images/s  ETA %.0f s", step, cfg.steps, rate, eta)


def main(argv):
    del argv
    try:
        cfg = config_from_flags()
    except config_lib.ConfigError as err:
        raise app.UsageError(str(err)) from None
    run_dir = pathlib.Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    # A dataset folder that is not what the flags say ends the run with its
    # message (it names the path), not a traceback.
    try:
        dataset = prepare_dataset(cfg.data)
    except config_lib.ConfigError as err:
        raise app.UsageError(str(err)) from None
    except records.DatasetError as err:
        sys.exit(f"error: --data_dir={cfg.data.data_dir}: {err}")
    logging.info("%s: %d training ids, %d RGB + %d IR training images, %d test images",
                 dataset.name, dataset.num_classes, len(dataset.train_rgb), len(dataset.train_ir),
                 len(dataset.test))
    writer = tf.summary.create_file_writer(str(run_dir))
    logging.info("The JSIA model lands with the model issue: streaming the input pipeline only.")
    run_training_stream(dataset, cfg, writer)
    features = pixel_baseline_features(dataset.test, cfg)
    ev = cfg.eval
    metrics = protocols.evaluate_test_set(
        features, dataset.test, dataset.name, sysu_modes=ev.sysu_modes, sysu_shots=ev.sysu_shots,
        sysu_rand_perm=ev.sysu_rand_perm or None, trials=ev.trials, regdb_directions=ev.regdb_directions,
        seed=cfg.data.seed)
    with writer.as_default(step=cfg.steps):
        for setting, values in metrics.items():
            tf.summary.scalar(f"eval_pixel_baseline/{setting}/rank1", values["cmc"]["1"])
            tf.summary.scalar(f"eval_pixel_baseline/{setting}/mAP", values["mAP"])
            logging.info("pixel baseline %s: %s", setting, metrics_lib.format_summary(values))
    (run_dir / "metrics_pixel_baseline.json").write_text(json.dumps(metrics, indent=2) + "\n")
    writer.flush()
    logging.info("TensorBoard: tensorboard --logdir %s", run_dir)


def run():
    flags.mark_flags_as_required(["run_dir", "data_dir"])
    app.run(main)


if __name__ == "__main__":
    run()
