"""``python -m jsia_tf.train --flagfile=configs/demo.flags``: the main job.

Flags are defined here and turned into one frozen :class:`jsia_tf.config.Config`
(written to ``<run_dir>/config.json`` once the resume has succeeded). The run locks its
folder (one training per folder), prepares its data and resumes from the newest
checkpoint in ``<run_dir>/checkpoints`` that loads (:mod:`jsia_tf.runs`; a folder with
recorded work is started over only with ``--restart``), builds the
:class:`jsia_tf.trainer.Trainer` (modules F, G, V and the discriminators of Sec. 3),
trains through the schedule's phases (G pre-training, then joint training, Sec. 4.2)
in the loop below, then evaluates module F's Eq. 17 features with the dataset's
protocol (``metrics.json``) and exports the embedder as a SavedModel for TF Serving
(``<run_dir>/export/<version>/``, :mod:`jsia_tf.export`). TensorBoard scalars, images
and histograms go to ``--run_dir``. A non-finite loss stops the run; the last
checkpoint written before it is kept.

``--strategy=mirrored`` trains on every local GPU, ``--strategy=multi_worker`` on
several hosts (``TF_CONFIG``, one process per host; :mod:`jsia_tf.distribute`); only
the chief writes to the run folder. See docs/DISTRIBUTED.md; :mod:`jsia_tf.launch_local`
starts a local cluster. ``--profile_steps=FIRST,LAST`` traces those steps with the
TensorFlow profiler (TensorBoard's Profile tab).
"""

import contextlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

from absl import app, flags, logging
import keras
import tensorflow as tf

from jsia_tf import config as config_lib
from jsia_tf import config_flags
from jsia_tf import distribute
from jsia_tf import export
from jsia_tf import runs
from jsia_tf import trainer as trainer_lib
from jsia_tf import visualize
from jsia_tf.data import pipeline, records, synthetic
from jsia_tf.eval import metrics as metrics_lib
from jsia_tf.eval import ground_truth, protocols, similarity

# Every field of the config sections made with config.option is a flag of the same name
# (or its metadata's): default, help and choices are written once, in config.py.
_SECTIONS = (("data", config_lib.DataConfig), ("eval", config_lib.EvalConfig), ("model", config_lib.ModelConfig),
             ("loss", config_lib.LossConfig), ("train", config_lib.TrainConfig))
_REQUIRED = ("run_dir", "data_dir")  # no default: absl insists on them (run())

for _cls in (config_lib.Config, *(cls for _, cls in _SECTIONS)):
    config_flags.define(_cls, required=_REQUIRED)
for _old, _new in config_lib.OLD_FLAGS.items():
    flags.DEFINE_alias(_old, _new)
# The schedule (TrainConfig.phases, config.paper_phases).
_PRETRAIN_EPOCHS = flags.DEFINE_integer("pretrain_epochs", config_lib.PAPER_PRETRAIN_EPOCHS,
                                        "Epochs of G pre-training (paper 100).")
_JOINT_EPOCHS = flags.DEFINE_integer("joint_epochs", config_lib.PAPER_JOINT_EPOCHS,
                                     "Epochs of joint training (paper 50).")
_LR_DECAY_EPOCHS = flags.DEFINE_list("lr_decay_epochs", [str(e) for e in config_lib.PAPER_LR_DECAY_EPOCHS],
                                     "Joint epochs at which the learning rates are multiplied by --lr_decay_factor "
                                     "(paper 30).")
_PRETRAIN_SET_LEVEL = flags.DEFINE_bool(
    "pretrain_set_level", config_lib.PAPER_PRETRAIN_SET_LEVEL,
    "G's pre-training also steps E^sl = E^i with module G's terms (with --sl=shared; the paper pre-trains the "
    "generation module, E^i included). false: the official GAN warm-up, which leaves its ImageNet stem as it is.")
_RESTART = flags.DEFINE_bool(
    "restart", False, "Start at step 0 in a --run_dir that holds a run's checkpoints or records: its files are "
    "moved into <run_dir>/restarted-<time>/. Without it such a run resumes from its newest checkpoint that loads.")


def config_from_flags():
    """The one place where flags become the run's Config."""
    for old, new in config_lib.OLD_FLAGS.items():
        if flags.FLAGS[old].present:
            logging.info("--%s is now --%s", old, new)
    values = {name: config_flags.values(cls) for name, cls in _SECTIONS}
    if not values["model"]["generation"]:  # module F alone: what needs module G is off unless given
        implied = {name: value for name, value in config_lib.MODULE_F_ALONE.items() if not flags.FLAGS[name].present}
        fields = {config_lib.flag_name(f): f.name for f in config_flags.option_fields(config_lib.LossConfig)}
        values["loss"].update({fields[name]: value for name, value in implied.items()})
        if implied:
            logging.info("--generation=false (module F alone) implies %s",
                         " ".join(f"--{name}={value}" for name, value in implied.items()))
    values["train"]["phases"] = config_lib.paper_phases(
        _PRETRAIN_EPOCHS.value, _JOINT_EPOCHS.value, config_flags.int_list("lr_decay_epochs", _LR_DECAY_EPOCHS.value),
        values["model"]["generation"],
        # With a separate E^i (--sl=separate, gan) module G's terms do not reach E^sl.
        _PRETRAIN_SET_LEVEL.value and values["model"]["sl"] == "shared")
    values["train"]["mixed_precision"] = resolve_precision(values["train"]["mixed_precision"])
    sections = {name: cls(**values[name]) for name, cls in _SECTIONS}
    return config_lib.Config(**config_flags.values(config_lib.Config), **sections)


def resolve_precision(precision, cpuinfo="/proc/cpuinfo"):
    """``--mixed_precision`` with ``auto`` made a Keras policy: mixed_bfloat16 where training
    runs on a CPU (no GPU visible) whose instruction set has bfloat16 arithmetic, float32
    elsewhere: on such CPUs (this project's) bfloat16 convolutions are faster and learn as
    well as float32 (docs/BENCHMARKS.md, docs/FIDELITY.md); without the instructions
    bfloat16 is emulated, slower than float32."""
    if precision != "auto":
        return precision
    try:
        with open(cpuinfo) as f:
            flags_line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags_line = ""
    native = bool({"avx512_bf16", "amx_bf16"} & set(flags_line.split()))
    resolved = "mixed_bfloat16" if native and not tf.config.list_physical_devices("GPU") else "float32"
    logging.info("--mixed_precision=auto: %s (%s)", resolved,
                 "a CPU with bfloat16 instructions" if resolved != "float32" else
                 "a GPU is visible" if native else "the CPU lacks bfloat16 instructions")
    return resolved


def images_per_step(phase, data_cfg):
    """Images a step of ``phase`` trains on: the generation batch (unless the phase computes
    module F's identity terms alone), plus the re-ID batch when the phase steps the re-ID
    encoders (both modalities)."""
    images = 0 if phase.objectives == ("reid",) else 2 * data_cfg.gan_num_ids * data_cfg.gan_num_instances
    if "reid_instance_level" in phase.groups:
        images += 2 * data_cfg.num_ids * data_cfg.num_instances
    return images


def run_training(trainer, batches, train_cfg, manager, writer, data_cfg, images=True, profile_dir=None,
                 evaluate_now=None, watchdog=None):
    """Steps ``trainer`` from its step counter to the end of the schedule.

    Steps are dispatched back to back: their scalars are copied to the host (which
    waits for the device) only on log and checkpoint steps. There every pending step's
    scalars are checked (:func:`jsia_tf.trainer.check_finite`) before anything is
    written: a non-finite one raises NonFiniteLossError naming the first bad step and
    the newest checkpoint on disk stays the last good one. Checkpoints every
    ``checkpoint_every`` steps and at the end; progress lines and scalars every
    ``log_every``; images every ``image_every`` if ``images``. With ``profile_dir``,
    the steps ``train_cfg.profile_steps`` (1-based, as in the progress lines) are traced
    by the TensorFlow profiler into it. ``evaluate_now()``, if given, runs every
    ``eval_every`` steps (not at the last step: the caller evaluates the final model).
    ``watchdog`` (a :class:`jsia_tf.distribute.ProgressWatchdog`), if given, hears a
    beat after each step and each copy of step results to the host; it is disarmed
    during ``evaluate_now``.
    """
    total = train_cfg.total_steps
    beat = watchdog.beat if watchdog else lambda: None
    step = int(trainer.step.numpy())
    first_traced, last_traced = train_cfg.profile_steps if profile_dir and train_cfg.profile_steps else (0, -1)
    profiling = False
    rates = None
    pending = []  # (step, scalar tensors) not yet copied to the host
    scalars = {}  # the values to log next
    window_start, window_steps, window_images = time.perf_counter(), 0, 0
    while step < total:
        phase = train_cfg.step_phase(step)
        now = train_cfg.learning_rates_at(step)
        if now != rates:
            rates = now
            trainer.set_learning_rates(rates)  # assigns the optimizers' variables: no retracing
        if not profiling and first_traced <= step + 1 <= last_traced:
            tf.profiler.experimental.start(str(profile_dir))
            profiling = True
        with tf.profiler.experimental.Trace("train", step_num=step + 1, _r=1):  # step markers in the trace
            reid_batch, gan_batch = next(batches)
            pending.append((step + 1, trainer.train_step(phase, reid_batch, gan_batch)))
        beat()
        step += 1
        window_steps += 1
        window_images += images_per_step(phase, data_cfg)
        if profiling and step in (last_traced, total):
            tf.profiler.experimental.stop()
            profiling = False
            logging.info("Profiled steps %d..%d into %s (TensorBoard: Profile tab)", first_traced, step, profile_dir)
        log_now = step % train_cfg.log_every == 0 or step == total
        save_now = step % train_cfg.checkpoint_every == 0 or step == total
        if log_now or save_now:
            for number, values in pending:
                latest = {name: float(value) for name, value in values.items()}
                trainer_lib.check_finite(latest, number)
                scalars.update(latest)  # each name's newest value (--generation_every: G's from its last step)
            pending.clear()
            beat()
        if log_now:
            seconds = time.perf_counter() - window_start
            rate = window_images / seconds
            with writer.as_default(step=step):
                for name, value in scalars.items():
                    tf.summary.scalar(name, value)
                tf.summary.scalar("train/learning_rate", rates["reid_instance_level"])
                tf.summary.scalar("train/learning_rate_generation", rates["generation"])
                tf.summary.scalar("train/images_per_second", rate)
            main = " ".join(f"{name.split('/')[-1]} {scalars[name]:.4f}" for name in (
                "loss/total", "loss/generator_total", "loss/id_cls", "loss/id_triplet") if name in scalars)
            logging.info("step %d/%d [%s] %s  %.1f images/s  ETA %.0f s", step, total, phase.name, main, rate,
                         (total - step) * seconds / window_steps)
            window_start, window_steps, window_images = time.perf_counter(), 0, 0
            scalars = {}
        if images and train_cfg.image_every and step % train_cfg.image_every == 0:
            with writer.as_default(step=step):
                write_generation_images(trainer, gan_batch)
        if evaluate_now and train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < total:
            if watchdog:
                watchdog.disarm()  # the chief's own evaluation: no collective to wait in
            evaluate_now()
            beat()
        if save_now:
            writer.flush()  # the summaries a checkpoint covers are on disk before it: a killed run loses none
            manager.save(checkpoint_number=step)
            beat()
    writer.flush()


def write_generation_images(trainer, gan_batch):
    """The Fig. 6 grid and the Fig. 7 strips (:func:`jsia_tf.visualize.training_images`), one image each."""
    local_batch = trainer.strategy.experimental_local_results(gan_batch)[0]
    pictures = visualize.training_images(trainer.model, local_batch, trainer.config.data.gan_num_instances)
    for name, picture in pictures.items():
        tf.summary.image(f"generation/{name}", picture)


# Inter-person pairs kept for the similarity histogram (a random sample beyond this).
_MAX_HISTOGRAM_PAIRS = 1_000_000


def write_similarity_histograms(features, test, dataset_name):
    """Fig. 4: cosine similarities of cross-modality (IR x RGB) test pairs, intra- vs inter-person."""
    intra, inter = similarity.cross_modality_similarities(features, test, dataset_name, max_inter=_MAX_HISTOGRAM_PAIRS)
    tf.summary.histogram("eval/similarity_intra_person", intra)
    tf.summary.histogram("eval/similarity_inter_person", inter)


def evaluate(trainer, dataset, cfg, writer, pairs=None):
    """The dataset's protocol on module F's Eq. 17 features, as TensorBoard scalars and histograms;
    with ``pairs`` (``synthetic.read_paired_test``), module G against them too."""
    ev = cfg.eval
    features = trainer.embed_images(pipeline.eval_dataset(dataset.test, cfg.data.height, cfg.data.width,
                                                          ev.batch_size))
    metrics = protocols.evaluate_test_set(
        features, dataset.test, dataset.name, sysu_modes=ev.sysu_modes, sysu_shots=ev.sysu_shots,
        sysu_rand_perm=ev.sysu_rand_perm or None, trials=ev.trials, regdb_directions=ev.regdb_directions,
        seed=cfg.data.seed)
    # Diagnostics beside the protocol: each modality alone, and both directions.
    diagnostics = protocols.evaluate_diagnostics(features, dataset.test.pids, dataset.test.cams, dataset.name)
    metrics.update({f"{dataset.name}_{name}": values for name, values in diagnostics.items()})
    generation = None
    if pairs is not None:  # module G against the true pairs; the judge is this run's module F
        generation = ground_truth.evaluate(trainer.model, trainer.embed, pairs, dataset.test, dataset.name,
                                           cfg.data.height, cfg.data.width, features, ev.batch_size)
    with writer.as_default(step=int(trainer.step.numpy())):
        for setting, values in metrics.items():
            tf.summary.scalar(f"eval/{setting}/rank1", values["cmc"]["1"])
            tf.summary.scalar(f"eval/{setting}/mAP", values["mAP"])
            tf.summary.scalar(f"eval/{setting}/mINP", values["mINP"])
            logging.info("%s: %s", setting, metrics_lib.format_summary(values))
        write_similarity_histograms(features, dataset.test, dataset.name)
        if generation is not None:
            for name, value in ground_truth.scalars(generation).items():
                tf.summary.scalar(name, value)
            logging.info("%s", ground_truth.summary_line(generation))
    writer.flush()
    return metrics, generation


# The test-set metrics of every evaluation of a run, by step (learning curves).
_TENSORFLOW_DIR = os.path.dirname(tf.__file__)


def _not_tensorflow_info(record):
    """Drops TensorFlow's own INFO lines (checkpoint sharding, SavedModel assets,
    collectives), which bury the progress lines; its warnings and errors stay."""
    return record.levelno >= logging.converter.STANDARD_WARNING or not record.pathname.startswith(_TENSORFLOW_DIR)


def usage_error(err):
    """Ends the process on a flag the run cannot use: its one line, not absl's usage text
    (this module's docstring and ~150 flags, which buried the line)."""
    sys.exit(f"error: {err} (--helpfull lists every flag)")


def main(argv):
    del argv
    if logging.get_verbosity() < logging.DEBUG:  # --verbosity=1 brings them back
        logging.get_absl_handler().addFilter(_not_tensorflow_info)
        tf.get_logger().setLevel("WARNING")  # its "INFO:tensorflow:" copies
    try:
        cfg = config_from_flags()
        strategy = distribute.make_strategy(cfg.train)
        distribute.check_replica_split(cfg.data, strategy.num_replicas_in_sync)
    except config_lib.ConfigError as err:
        usage_error(err)
    except distribute.ClusterError as err:
        sys.exit(f"error: {err}")
    configure_tensorflow(cfg.train)
    try:
        run_as_worker(cfg, strategy, _RESTART.value)
    except BaseException as err:  # pylint: disable=broad-except
        multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        if not multi_worker or (isinstance(err, SystemExit) and not err.code):
            raise
        distribute.end_worker(err, cfg)  # every worker of the run must end, not only this one


def configure_tensorflow(train_cfg):
    """The process-wide TensorFlow settings of a run: the Keras dtype policy and Grappler."""
    keras.mixed_precision.set_global_policy(train_cfg.mixed_precision)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": not train_cfg.graph_optimizer})


def run_as_worker(cfg, strategy, restart=False):
    """Trains, evaluates and exports: into the run folder on the chief, into a scratch
    folder elsewhere (every worker saves checkpoints and the export, because saving runs
    collectives; TF's multi-worker guide).

    The chief holds the run folder's lock throughout (one training per folder) and
    checks the folder before changing any file (:func:`jsia_tf.runs.prepare_run_folder`;
    ``restart`` moves a previous run aside)."""
    run_dir = pathlib.Path(cfg.run_dir)
    try:
        if distribute.is_chief(strategy):
            run_dir.mkdir(parents=True, exist_ok=True)
            with runs.lock_run_folder(run_dir):
                runs.prepare_run_folder(run_dir, cfg, restart)
                train_evaluate_export(cfg, strategy, run_dir)
            return
        scratch = pathlib.Path(tempfile.mkdtemp(prefix="jsia_worker_"))
        logging.info("Not the chief: no summaries; checkpoints and export go to %s, removed at the end", scratch)
        try:
            train_evaluate_export(cfg, strategy, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except runs.RunFolderError as err:
        sys.exit(f"error: {err}")


def train_evaluate_export(cfg, strategy, out_dir):
    """Trains, then evaluates and exports, writing checkpoints and the export under ``out_dir``.

    ``out_dir`` is the run folder on the chief, which alone also writes dataset.json,
    summaries, the profile and metrics.json; every worker resumes from the run folder's
    checkpoints.
    """
    run_dir = pathlib.Path(cfg.run_dir)
    chief = out_dir == run_dir
    # A dataset folder that is not what the flags say ends the run with its
    # message (it names the path), not a traceback.
    try:
        dataset = runs.prepare_dataset(cfg.data)
    except config_lib.ConfigError as err:
        usage_error(err)
    except records.DatasetError as err:
        sys.exit(f"error: --data_dir={cfg.data.data_dir}: {err}")
    logging.info("%s: %d training ids, %d RGB + %d IR training images, %d test images",
                 dataset.name, dataset.num_classes, len(dataset.train_rgb), len(dataset.train_ir),
                 len(dataset.test))
    logging.info("%d replica(s), %s", strategy.num_replicas_in_sync, cfg.train.mixed_precision)
    # Weight initialisation is seeded too: a run is reproducible from its config.
    keras.utils.set_random_seed(cfg.data.seed)
    trainer = trainer_lib.Trainer(cfg, dataset.num_classes, strategy)
    try:
        start = runs.restore_or_start(trainer, run_dir / "checkpoints")
    except runs.RunFolderError as err:
        raise runs.RunFolderError(f"{err}: {runs.RESTART_ADVICE}") from None
    if chief:  # only now: a rejected start leaves the run's config.json as its checkpoints need it
        cfg.save(run_dir / "config.json")
        runs.write_dataset_summary(run_dir, dataset)
    manager = tf.train.CheckpointManager(trainer.checkpoint(), str(out_dir / "checkpoints"),
                                         max_to_keep=cfg.train.keep_checkpoints)
    watchdog = None
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        watchdog = distribute.ProgressWatchdog(cfg)
        try:
            with watchdog:
                distribute.check_workers_agree(strategy, trainer)
        except distribute.ClusterError as err:
            sys.exit(f"error: {err}")
    writer = tf.summary.create_file_writer(str(run_dir)) if chief else tf.summary.create_noop_writer()

    pairs = synthetic.read_paired_test(cfg.data.data_dir) if cfg.model.generation else None  # read once

    def evaluate_and_record():
        metrics, generation = evaluate(trainer, dataset, cfg, writer, pairs)
        runs.record_evaluation(run_dir / runs.EVAL_HISTORY, int(trainer.step.numpy()), metrics, generation)
        return metrics

    logging.info("Training steps %d..%d of %d", start, cfg.train.total_steps, cfg.train.total_steps)
    try:
        with watchdog or contextlib.nullcontext():
            run_training(trainer, distribute.training_batches(dataset, cfg, strategy, start), cfg.train, manager,
                         writer, cfg.data, images=chief, profile_dir=run_dir if chief else None,
                         evaluate_now=evaluate_and_record if chief else None, watchdog=watchdog)
    except trainer_lib.NonFiniteLossError as err:
        sys.exit(f"error: {err}: {manager.latest_checkpoint or 'no checkpoint was written yet'}")
    logging.info("Final weights sha256 %s", distribute.weights_digest(trainer))
    if chief:  # embedding is local to the chief: no collectives
        metrics = evaluate_and_record()
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    export_dir = export.export_trainer(trainer, str(out_dir / "export"), manager.latest_checkpoint)
    if chief:
        logging.info("Exported the embedder to %s", export_dir)
        logging.info("TensorBoard: tensorboard --logdir %s", run_dir)


def main_then_exit(argv):
    """:func:`main`, then, after a run on one host that ended well, the process ends
    without the interpreter's teardown: everything is on disk by then (checkpoints,
    flushed summaries, metrics.json, the export), and tearing down TensorFlow's objects
    takes seconds (docs/BENCHMARKS.md). A multi-worker run
    ends normally: its workers leave the coordination service on the way out."""
    main(argv)
    if flags.FLAGS.strategy != "multi_worker":
        distribute.end_process(0)


def run():
    flags.mark_flags_as_required(["run_dir", "data_dir"])
    app.run(main_then_exit)


if __name__ == "__main__":
    run()
