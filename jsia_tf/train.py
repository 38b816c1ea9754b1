"""``python -m jsia_tf.train --flagfile=configs/demo.flags``: the main job.

Flags are defined here and turned into one frozen :class:`jsia_tf.config.Config`
(written to ``<run_dir>/config.json``). The run prepares its data and resumes from
the newest checkpoint in ``<run_dir>/checkpoints`` if there is one (:mod:`jsia_tf.runs`:
the step counter and the data streams continue where they stopped), builds the
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
from jsia_tf import distribute
from jsia_tf import export
from jsia_tf import runs
from jsia_tf import trainer as trainer_lib
from jsia_tf.data import pipeline, records
from jsia_tf.eval import metrics as metrics_lib
from jsia_tf.eval import protocols, similarity

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run folder: config.json, TensorBoard events, metrics.")
_DATASET = flags.DEFINE_enum("dataset", "regdb", config_lib.DATASETS, "Dataset layout and protocol.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset root folder.")
_TRIAL = flags.DEFINE_integer("trial", 1, "RegDB split, 1..10.")
_SYNTHETIC_IDS = flags.DEFINE_integer(
    "synthetic_ids", 0, "If > 0 and --data_dir holds no dataset, generate a synthetic one with this many ids.")
_SYNTHETIC_SEED = flags.DEFINE_integer("synthetic_seed", 0, "Seed of the synthetic dataset (not --seed).")
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
_INTENSITY_AUG = flags.DEFINE_float("intensity_aug", 0.0,
                                    "Random intensity remapping probability (inversion, gamma; both modalities).")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds sampling and augmentation.")
_SYSU_MODES = flags.DEFINE_list("sysu_modes", list(config_lib.SYSU_MODES), "SYSU-MM01 search modes.")
_SYSU_SHOTS = flags.DEFINE_list("sysu_shots", [str(s) for s in config_lib.SYSU_SHOTS], "SYSU-MM01 gallery shots.")
_SYSU_RAND_PERM = flags.DEFINE_string("sysu_rand_perm", "", "Official rand_perm_cam.mat (default: seeded galleries).")
_TRIALS = flags.DEFINE_integer("trials", 10, "SYSU-MM01 gallery draws averaged.")
_REGDB_DIRECTIONS = flags.DEFINE_list(
    "regdb_directions", list(config_lib.REGDB_DIRECTIONS), "RegDB directions: v2t (visible query), t2v.")
_EVAL_BATCH_SIZE = flags.DEFINE_integer("eval_batch_size", 64, "Images per embedding batch.")
# Model (Sec. 3, 4.2).
_BACKBONE = flags.DEFINE_enum("backbone", "resnet50", config_lib.BACKBONES, "Re-ID backbone (paper: resnet50).")
_BACKBONE_WEIGHTS = flags.DEFINE_string(
    "backbone_weights", "imagenet", "'imagenet', 'none' or a keras.applications ResNet50 weights file.")
_BACKBONE_WIDTHS = flags.DEFINE_list("backbone_widths", ["64", "128", "256", "512"], "Stage widths (resnet18 only).")
_NUM_REGIONS = flags.DEFINE_integer("num_regions", 6, "Horizontal regions n of Eq. 12 (0: no local classifiers).")
_GRAY_INPUT = flags.DEFINE_bool("gray_input", False, "Gray images into E^sl (official code).")
_GENERATION = flags.DEFINE_bool("generation", True, "Train modules G and V (false: module F alone, Table 3 row 1).")
_MODALITY_BN = flags.DEFINE_enum("modality_bn", "joint", config_lib.MODALITY_BN,
                                 "Re-ID batch norm over both modalities in one call (joint) or per modality "
                                 "(separate, official).")
_GENERATED_BN = flags.DEFINE_enum("generated_bn", "restore", config_lib.GENERATED_BN,
                                  "Generated images and F's BN moving statistics: restore them, inference mode, "
                                  "or update them (official).")
_TEST_FEATURES = flags.DEFINE_enum("test_features", "bn", config_lib.TEST_FEATURES,
                                    "Eq. 17 vector: BN output or pooled.")
_SL = flags.DEFINE_enum("sl", "shared", config_lib.SET_LEVEL_SHARING,
                        "Set-level alignment (Table 3): E^i = E^sl (shared, the paper), a separate E^i (no SL), "
                        "or a separate E^i with E^sl trained modality-adversarially (gan, the degraded SL).")
_STYLE_DIM = flags.DEFINE_integer("style_dim", 128, "Style code length.")
_STYLE_BASE_WIDTH = flags.DEFINE_integer("style_base_width", 32, "Style encoder first width.")
_STYLE_NUM_DOWNSAMPLE = flags.DEFINE_integer("style_num_downsample", 2, "Style encoder strided convs (paper 2).")
_STYLE_MAX_WIDTH = flags.DEFINE_integer("style_max_width", 128, "Style encoder maximum width.")
_MLP_HIDDEN_DIM = flags.DEFINE_integer("mlp_hidden_dim", 256, "AdaIN MLP width.")
_NUM_RES_BLOCKS = flags.DEFINE_integer("num_res_blocks", 4, "AdaIN residual blocks per decoder (paper 4).")
_DISC_NUM_SCALES = flags.DEFINE_integer("disc_num_scales", 2, "Discriminator scales.")
_DISC_NUM_LAYERS = flags.DEFINE_integer("disc_num_layers", 4, "Strided convs per discriminator scale.")
_DISC_BASE_WIDTH = flags.DEFINE_integer("disc_base_width", 32, "Discriminator first width.")
_VARIATION_HIDDEN = flags.DEFINE_integer("variation_hidden_channels", 256, "Module V width.")
_VARIATION_LATENT = flags.DEFINE_integer("variation_latent_channels", 64, "Module V latent channels.")
_VARIATION_DOWNSAMPLE = flags.DEFINE_integer("variation_num_downsample", 1, "Module V strided convs.")
# Losses (Eqs. 8, 16).
_LAMBDA_RECON = flags.DEFINE_float("lambda_recon", 1.0, "Eq. 8 reconstruction weight (paper 1, official 10).")
_LAMBDA_CYC = flags.DEFINE_float("lambda_cyc", 10.0, "Eq. 8 cycle weight (official 10).")
_LAMBDA_GAN = flags.DEFINE_float("lambda_gan", 1.0, "Eq. 8 GAN weight (official 1).")
_LAMBDA_IL = flags.DEFINE_float("lambda_il", 0.01, "Eq. 16 instance-level alignment weight (official 0.01; 0: no IL).")
_LAMBDA_LR = flags.DEFINE_float("lambda_lr", 0.01, "Eq. 16 local-region alignment weight (0: no LR).")
_LAMBDA_UI = flags.DEFINE_float("lambda_ui", 0.01, "Eq. 16 unseen-identity weight (0: no UI).")
_TRIPLET_MARGIN = flags.DEFINE_float("triplet_margin", 0.3, "Eq. 13 triplet margin.")
_LABEL_SMOOTHING = flags.DEFINE_float("label_smoothing", 0.1, "Eq. 13 label smoothing (0: the paper's CE).")
_IL_CONVENTION = flags.DEFINE_enum("il_convention", "paper", config_lib.ALIGNMENT_CONVENTIONS,
                                   "Eqs. 11, 12 convention.")
_VARIATION_DISTRIBUTION = flags.DEFINE_enum("variation_distribution", "paper", config_lib.VARIATION_DISTRIBUTIONS,
                                            "Eq. 10 term.")
_UI_DIRECTION = flags.DEFINE_enum("ui_direction", "paper", config_lib.UNSEEN_ID_DIRECTIONS, "Eq. 15 KL direction.")
_IL = flags.DEFINE_bool("il", True, "Eq. 11 instance-level alignment (Table 3 IL).")
_LR_ALIGN = flags.DEFINE_enum("lr_align", "paired", config_lib.LOCAL_ALIGNMENTS,
                              "Eq. 12 local regions on generated pairs, on real unpaired images, or off (Table 3 LR).")
_UI = flags.DEFINE_bool("ui", True, "Eq. 15 paired images of unseen identities (Table 3 UI).")
_LAMBDA_LOCAL_ID = flags.DEFINE_float("lambda_local_id", 1.0,
                                      "Identity loss of the local-region classifiers C^k (PCB; 0: KL only).")
_LAMBDA_MODALITY = flags.DEFINE_float("lambda_modality", 1.0, "Modality-adversarial set-level weight (--sl=gan).")
# Schedule and optimisation (Sec. 4.2).
_PRETRAIN_EPOCHS = flags.DEFINE_integer("pretrain_epochs", 100, "Epochs of G pre-training (paper 100).")
_JOINT_EPOCHS = flags.DEFINE_integer("joint_epochs", 50, "Epochs of joint training (paper 50).")
_LR_DECAY_EPOCHS = flags.DEFINE_list("lr_decay_epochs", ["30"], "Joint epochs at which lr x 0.1 (paper 30).")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 200, "Steps per epoch (official 200).")
_LR = flags.DEFINE_float("lr", 4.5e-4, "Re-ID (module F) AdamW learning rate (official 4.5e-4; paper 2e-4).")
_BETA1 = flags.DEFINE_float("beta1", 0.9, "Re-ID AdamW beta1 (official 0.9; paper 0.5).")
_BETA2 = flags.DEFINE_float("beta2", 0.999, "Re-ID AdamW beta2.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 5e-4, "Re-ID decoupled weight decay (official 5e-4, as L2).")
_GAN_LR = flags.DEFINE_float("gan_lr", 1e-4, "G, V and discriminators' AdamW learning rate (official 1e-4).")
_GAN_BETA1 = flags.DEFINE_float("gan_beta1", 0.5, "G, V and discriminators' AdamW beta1 (official 0.5).")
_GAN_BETA2 = flags.DEFINE_float("gan_beta2", 0.999, "G, V and discriminators' AdamW beta2.")
_GAN_WEIGHT_DECAY = flags.DEFINE_float("gan_weight_decay", 1e-4, "G, V and discriminators' weight decay.")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 0, "Linear re-ID learning-rate warm-up steps (0: none).")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 1000, "Steps between checkpoints.")
_KEEP_CHECKPOINTS = flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "Steps between progress lines and scalar summaries.")
_IMAGE_EVERY = flags.DEFINE_integer("image_every", 1000, "Steps between image summaries (0: never).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 0, "Steps between test-set evaluations (0: only at the end).")
_STRATEGY = flags.DEFINE_enum("strategy", "default", config_lib.STRATEGIES,
                              "default: one device; mirrored: tf.distribute.MirroredStrategy (local GPUs); "
                              "multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG.")
_CPU_REPLICAS = flags.DEFINE_integer("cpu_replicas", 0, "With --strategy=mirrored: logical CPU replicas (tests).")
_COLLECTIVE_TIMEOUT_S = flags.DEFINE_float(
    "collective_timeout_s", 1800, "With --strategy=multi_worker: a collective that waits longer than this for a "
    "peer ends the run (0: no limit); above the longest tracing, evaluation or checkpoint of one worker.")
_MIXED_PRECISION = flags.DEFINE_enum("mixed_precision", "float32", config_lib.PRECISIONS, "Keras dtype policy.")
_OPTIMIZER = flags.DEFINE_enum("optimizer", "adam", config_lib.OPTIMIZERS,
                               "adam (paper) or plain sgd (tests of distributed gradient scaling).")
_JIT_COMPILE = flags.DEFINE_bool("jit_compile", False, "Compile the training steps with XLA.")
_PROFILE_STEPS = flags.DEFINE_list("profile_steps", [], "FIRST,LAST global steps to trace with the profiler.")


def _int_list(flag, values):
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise config_lib.ConfigError(flag, values, "comma-separated integers") from None


def config_from_flags():
    """The one place where flags become the run's Config."""
    data = config_lib.DataConfig(
        dataset=_DATASET.value, data_dir=_DATA_DIR.value or "", trial=_TRIAL.value,
        synthetic_ids=_SYNTHETIC_IDS.value, synthetic_seed=_SYNTHETIC_SEED.value, height=_HEIGHT.value,
        width=_WIDTH.value, num_ids=_NUM_IDS.value, num_instances=_NUM_INSTANCES.value,
        gan_num_ids=_GAN_NUM_IDS.value, gan_num_instances=_GAN_NUM_INSTANCES.value,
        flip=_FLIP.value, pad=_PAD.value, random_erasing=_RANDOM_ERASING.value,
        channel_aug=_CHANNEL_AUG.value, intensity_aug=_INTENSITY_AUG.value, seed=_SEED.value)
    eval_cfg = config_lib.EvalConfig(
        sysu_modes=tuple(_SYSU_MODES.value), sysu_shots=_int_list("sysu_shots", _SYSU_SHOTS.value),
        sysu_rand_perm=_SYSU_RAND_PERM.value, trials=_TRIALS.value,
        regdb_directions=tuple(_REGDB_DIRECTIONS.value), batch_size=_EVAL_BATCH_SIZE.value)
    model = config_lib.ModelConfig(
        backbone=_BACKBONE.value, backbone_weights=_BACKBONE_WEIGHTS.value,
        backbone_widths=_int_list("backbone_widths", _BACKBONE_WIDTHS.value), num_regions=_NUM_REGIONS.value,
        gray_input=_GRAY_INPUT.value, generation=_GENERATION.value, modality_bn=_MODALITY_BN.value,
        generated_bn=_GENERATED_BN.value, test_features=_TEST_FEATURES.value, set_level=_SL.value,
        style_dim=_STYLE_DIM.value, style_base_width=_STYLE_BASE_WIDTH.value,
        style_num_downsample=_STYLE_NUM_DOWNSAMPLE.value, style_max_width=_STYLE_MAX_WIDTH.value,
        mlp_hidden_dim=_MLP_HIDDEN_DIM.value, num_res_blocks=_NUM_RES_BLOCKS.value,
        disc_num_scales=_DISC_NUM_SCALES.value, disc_num_layers=_DISC_NUM_LAYERS.value,
        disc_base_width=_DISC_BASE_WIDTH.value, variation_hidden_channels=_VARIATION_HIDDEN.value,
        variation_latent_channels=_VARIATION_LATENT.value, variation_num_downsample=_VARIATION_DOWNSAMPLE.value)
    loss = config_lib.LossConfig(
        lambda_recon=_LAMBDA_RECON.value, lambda_cyc=_LAMBDA_CYC.value, lambda_gan=_LAMBDA_GAN.value,
        lambda_il=_LAMBDA_IL.value, lambda_lr=_LAMBDA_LR.value, lambda_ui=_LAMBDA_UI.value,
        triplet_margin=_TRIPLET_MARGIN.value, label_smoothing=_LABEL_SMOOTHING.value,
        il_convention=_IL_CONVENTION.value, variation_distribution=_VARIATION_DISTRIBUTION.value,
        ui_direction=_UI_DIRECTION.value,
        instance_alignment=_IL.value, local_alignment=_LR_ALIGN.value, unseen_identity=_UI.value,
        lambda_local_id=_LAMBDA_LOCAL_ID.value, lambda_modality=_LAMBDA_MODALITY.value)
    phases = config_lib.paper_phases(_PRETRAIN_EPOCHS.value, _JOINT_EPOCHS.value,
                                     _int_list("lr_decay_epochs", _LR_DECAY_EPOCHS.value), _GENERATION.value)
    train = config_lib.TrainConfig(
        phases=phases, steps_per_epoch=_STEPS_PER_EPOCH.value, lr=_LR.value, beta1=_BETA1.value,
        beta2=_BETA2.value, weight_decay=_WEIGHT_DECAY.value, gan_lr=_GAN_LR.value, gan_beta1=_GAN_BETA1.value,
        gan_beta2=_GAN_BETA2.value, gan_weight_decay=_GAN_WEIGHT_DECAY.value, warmup_steps=_WARMUP_STEPS.value,
        eval_every=_EVAL_EVERY.value, checkpoint_every=_CHECKPOINT_EVERY.value,
        keep_checkpoints=_KEEP_CHECKPOINTS.value, log_every=_LOG_EVERY.value, image_every=_IMAGE_EVERY.value,
        strategy=_STRATEGY.value, cpu_replicas=_CPU_REPLICAS.value,
        collective_timeout_s=_COLLECTIVE_TIMEOUT_S.value, mixed_precision=_MIXED_PRECISION.value,
        optimizer=_OPTIMIZER.value, jit_compile=_JIT_COMPILE.value,
        profile_steps=_int_list("profile_steps", _PROFILE_STEPS.value))
    return config_lib.Config(run_dir=_RUN_DIR.value or "", data=data, eval=eval_cfg, model=model, loss=loss,
                             train=train)


def images_per_step(phase, data_cfg):
    """Images a step of ``phase`` trains on: the generation batch, plus the re-ID batch
    when the phase steps the re-ID encoders (both modalities)."""
    images = 2 * data_cfg.gan_num_ids * data_cfg.gan_num_instances
    if "reid_instance_level" in phase.groups:
        images += 2 * data_cfg.num_ids * data_cfg.num_instances
    return images


def run_training(trainer, batches, train_cfg, manager, writer, data_cfg, images=True, profile_dir=None,
                 evaluate_now=None):
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
    """
    total = train_cfg.total_steps
    step = int(trainer.step.numpy())
    first_traced, last_traced = train_cfg.profile_steps if profile_dir and train_cfg.profile_steps else (0, -1)
    profiling = False
    rates = None
    pending = []  # (step, scalar tensors) not yet copied to the host
    window_start, window_steps, window_images = time.perf_counter(), 0, 0
    while step < total:
        phase, _ = train_cfg.phase_at(step)
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
                scalars = {name: float(value) for name, value in values.items()}
                trainer_lib.check_finite(scalars, number)
            pending.clear()
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
        if images and train_cfg.image_every and step % train_cfg.image_every == 0:
            with writer.as_default(step=step):
                write_generation_images(trainer, gan_batch)
        if evaluate_now and train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < total:
            evaluate_now()
        if save_now:
            writer.flush()  # the summaries a checkpoint covers are on disk before it: a killed run loses none
            manager.save(checkpoint_number=step)
    writer.flush()


def write_generation_images(trainer, gan_batch):
    """Fig. 6 grids (real | generated pair | reconstruction | cycle) and Fig. 7 mixing strips."""
    local_batch = trainer.strategy.experimental_local_results(gan_batch)[0]
    for name, images in trainer.sample_images(local_batch).items():
        tf.summary.image(f"generation/{name}", images, max_outputs=images.shape[0])


# Inter-person pairs kept for the similarity histogram (a random sample beyond this).
_MAX_HISTOGRAM_PAIRS = 1_000_000


def write_similarity_histograms(features, test, dataset_name):
    """Fig. 4: cosine similarities of cross-modality (IR x RGB) test pairs, intra- vs inter-person."""
    intra, inter = similarity.cross_modality_similarities(features, test, dataset_name, max_inter=_MAX_HISTOGRAM_PAIRS)
    tf.summary.histogram("eval/similarity_intra_person", intra)
    tf.summary.histogram("eval/similarity_inter_person", inter)


def evaluate(trainer, dataset, cfg, writer):
    """The dataset's protocol on module F's Eq. 17 features, as TensorBoard scalars and histograms."""
    ev = cfg.eval
    features = trainer.embed_images(pipeline.eval_dataset(dataset.test, cfg.data.height, cfg.data.width,
                                                          ev.batch_size))
    metrics = protocols.evaluate_test_set(
        features, dataset.test, dataset.name, sysu_modes=ev.sysu_modes, sysu_shots=ev.sysu_shots,
        sysu_rand_perm=ev.sysu_rand_perm or None, trials=ev.trials, regdb_directions=ev.regdb_directions,
        seed=cfg.data.seed)
    # Diagnostic beside the protocol: how well each modality alone re-identifies.
    intra = protocols.evaluate_intra_modality(features, dataset.test.pids, dataset.test.cams, dataset.name)
    metrics.update({f"{dataset.name}_{name}": values for name, values in intra.items()})
    with writer.as_default(step=int(trainer.step.numpy())):
        for setting, values in metrics.items():
            tf.summary.scalar(f"eval/{setting}/rank1", values["cmc"]["1"])
            tf.summary.scalar(f"eval/{setting}/mAP", values["mAP"])
            tf.summary.scalar(f"eval/{setting}/mINP", values["mINP"])
            logging.info("%s: %s", setting, metrics_lib.format_summary(values))
        write_similarity_histograms(features, dataset.test, dataset.name)
    writer.flush()
    return metrics


# The test-set metrics of every evaluation of a run, by step (learning curves).
_TENSORFLOW_DIR = os.path.dirname(tf.__file__)


def _not_tensorflow_info(record):
    """Drops TensorFlow's own INFO lines (checkpoint sharding, SavedModel assets,
    collectives), which bury the progress lines; its warnings and errors stay."""
    return record.levelno >= logging.converter.STANDARD_WARNING or not record.pathname.startswith(_TENSORFLOW_DIR)


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
        raise app.UsageError(str(err)) from None
    except distribute.ClusterError as err:
        sys.exit(f"error: {err}")
    keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
    try:
        run_as_worker(cfg, strategy)
    except BaseException as err:  # pylint: disable=broad-except
        multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        if not multi_worker or (isinstance(err, SystemExit) and not err.code):
            raise
        distribute.end_worker(err, cfg)  # every worker of the run must end, not only this one


def run_as_worker(cfg, strategy):
    """Trains, evaluates and exports: into the run folder on the chief, into a scratch
    folder elsewhere (every worker saves checkpoints and the export, because saving runs
    collectives; TF's multi-worker guide)."""
    run_dir = pathlib.Path(cfg.run_dir)
    if distribute.is_chief(strategy):
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")
        train_evaluate_export(cfg, strategy, run_dir)
        return
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="jsia_worker_"))
    logging.info("Not the chief: no summaries; checkpoints and export go to %s, removed at the end", scratch)
    try:
        train_evaluate_export(cfg, strategy, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
        raise app.UsageError(str(err)) from None
    except records.DatasetError as err:
        sys.exit(f"error: --data_dir={cfg.data.data_dir}: {err}")
    logging.info("%s: %d training ids, %d RGB + %d IR training images, %d test images",
                 dataset.name, dataset.num_classes, len(dataset.train_rgb), len(dataset.train_ir),
                 len(dataset.test))
    logging.info("%d replica(s), %s", strategy.num_replicas_in_sync, cfg.train.mixed_precision)
    # Weight initialisation is seeded too: a run is reproducible from its config.
    keras.utils.set_random_seed(cfg.data.seed)
    if chief:
        runs.write_dataset_summary(run_dir, dataset)
    trainer = trainer_lib.Trainer(cfg, dataset.num_classes, strategy)
    manager = tf.train.CheckpointManager(trainer.checkpoint(), str(out_dir / "checkpoints"),
                                         max_to_keep=cfg.train.keep_checkpoints)
    start = runs.restore_or_start(trainer, manager, run_dir / "checkpoints")
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        try:
            distribute.check_workers_agree(strategy, trainer)
        except distribute.ClusterError as err:
            sys.exit(f"error: {err}")
    writer = tf.summary.create_file_writer(str(run_dir)) if chief else tf.summary.create_noop_writer()

    def evaluate_and_record():
        metrics = evaluate(trainer, dataset, cfg, writer)
        runs.record_evaluation(run_dir / runs.EVAL_HISTORY, int(trainer.step.numpy()), metrics)
        return metrics

    logging.info("Training steps %d..%d of %d", start, cfg.train.total_steps, cfg.train.total_steps)
    try:
        run_training(trainer, distribute.training_batches(dataset, cfg, strategy, start), cfg.train, manager, writer,
                     cfg.data, images=chief, profile_dir=run_dir if chief else None,
                     evaluate_now=evaluate_and_record if chief else None)
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


def run():
    flags.mark_flags_as_required(["run_dir", "data_dir"])
    app.run(main)


if __name__ == "__main__":
    run()
