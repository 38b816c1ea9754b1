"""The run configuration: frozen, validated dataclasses.

Flags become a :class:`Config` once, in the entry point (``train.py``); nothing
below it reads absl flags. Validation names the flag and the value it rejects.
The resolved config is written to ``<run_dir>/config.json``.
"""

import dataclasses
import json
import pathlib

# The choices of every option live here, so that importing the config needs neither
# TensorFlow nor Keras; the modules that act on a choice import it from here.
DATASETS = ("sysu", "regdb")  # the evaluation protocols too
SYSU_MODES = ("all", "indoor")  # search modes; eval.protocols maps each to its gallery cameras
SYSU_SHOTS = (1, 10)  # single-shot, multi-shot: gallery images per (person, camera)
REGDB_DIRECTIONS = ("v2t", "t2v")  # visible query -> thermal gallery, and back
REGDB_TRIALS = range(1, 11)  # the 10 random train/test splits
BACKBONES = ("resnet50", "resnet18")
# Widths of the backbone stages conv2..conv5 (the stem has the first); a ResNet-50
# stage outputs 4x its width (bottleneck blocks), a ResNet-18 stage its width.
DEFAULT_WIDTHS = (64, 128, 256, 512)
# Number of local regions n of Eq. 12: the paper does not say; PCB (Sun et al. 2018),
# which Sec. 3.3 follows, uses 6.
DEFAULT_NUM_REGIONS = 6
# Which vector Eq. 17 returns: "bn", the classifier's batch-norm output (official code),
# or "pool", V = GAP(T) (the paper's text).
TEST_FEATURES = ("bn", "pool")
ALIGNMENT_CONVENTIONS = ("paper", "official")  # Eqs. 11, 12 (losses.instance_alignment_loss)
VARIATION_DISTRIBUTIONS = ("paper", "kl")  # Eq. 10 (losses.variation_loss)
UNSEEN_ID_DIRECTIONS = ("paper", "target_first")  # Eq. 15 (losses.unseen_identity_loss)
# Set-level alignment (Table 3): E^i = E^sl (the paper's SL), a separate E^i (no SL), or
# a separate E^i with E^sl trained by a modality-adversarial loss (the degraded SL).
SET_LEVEL_SHARING = ("shared", "separate", "gan")
# Local-region alignment (Table 3): on generated pairs (the paper), on the original
# unpaired images of the same identity (the degraded LR), or off.
LOCAL_ALIGNMENTS = ("paired", "unpaired", "off")
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# How batch norm in E^sl / E^il sees the re-ID batch: both modalities in one call
# ("joint", as at test time) or one call per modality ("separate", the official code).
MODALITY_BN = ("joint", "separate")
# What F's batch-norm moving statistics learn from images that are not real training
# images (generated pairs, cycle inputs, mixed images): "restore" (normalised with their
# batch statistics, the moving statistics put back afterwards), "inference" (normalised
# with the moving statistics) or "update" (official: they update the statistics too).
GENERATED_BN = ("restore", "inference", "update")
OPTIMIZERS = ("adam", "sgd")
# The trainer's variable groups, one AdamW optimizer each; see jsia_tf.trainer.
GROUPS = ("generation", "discriminators", "reid_set_level", "reid_instance_level", "variation")
# Phase names of the paper's schedule (Sec. 4.2): G pre-trained, then joint training.
PRETRAIN_PHASE, JOINT_PHASE = "pretrain_g", "joint"
# Pre-training steps module G (generators + discriminators) and module V, which is
# "joint trained with our generation module" (Sec. 3.2); the re-ID encoders are not
# stepped, as in the official GAN warm-up.
PRETRAIN_GROUPS = ("generation", "discriminators", "variation")
# Module F's groups: the re-ID optimizer settings (TrainConfig.lr ...); the others take
# the generation settings (TrainConfig.gan_lr ...).
REID_GROUPS = ("reid_set_level", "reid_instance_level")
_PHASE_FLAGS = {PRETRAIN_PHASE: "pretrain_epochs", JOINT_PHASE: "joint_epochs"}


class ConfigError(ValueError):
    """A flag has a value the run cannot use."""

    def __init__(self, flag, value, expected):
        super().__init__(f"--{flag}={value!r}: expected {expected}")
        self.flag = flag


def _require(ok, flag, value, expected):
    if not ok:
        raise ConfigError(flag, value, expected)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Dataset, image size and the cross-modal identity sampler (paper Sec. 4.2).

    Attributes:
      dataset: "regdb" or "sysu" (the folder layout and evaluation protocol).
      data_dir: dataset root.
      trial: RegDB train/test split, 1..10.
      synthetic_ids: when > 0 and ``data_dir`` holds no dataset yet (or one rendered
        with other settings), generate a synthetic one with this many identities there
        first (demo/smoke presets).
      synthetic_seed: seeds the synthetic dataset; separate from ``seed``, so runs with
        several training seeds share one benchmark.
      height, width: network input size (paper: 256 x 128).
      num_ids, num_instances: P identities x K images per modality per re-ID
        batch (paper: 16 x 4, so 128 images).
      gan_num_ids, gan_num_instances: the same for the generation batches
        (official code: 3 x 3).
      flip, pad, random_erasing, channel_aug, intensity_aug: training augmentation
        (``jsia_tf.data.pipeline.AugmentConfig``).
      seed: seeds the sampler and the augmentation.
    """

    dataset: str = "regdb"
    data_dir: str = ""
    trial: int = 1
    synthetic_ids: int = 0
    synthetic_seed: int = 0
    height: int = 256
    width: int = 128
    num_ids: int = 16
    num_instances: int = 4
    gan_num_ids: int = 3
    gan_num_instances: int = 3
    flip: bool = True
    pad: int = 10
    random_erasing: float = 0.5
    channel_aug: float = 0.0
    intensity_aug: float = 0.0
    seed: int = 0

    def __post_init__(self):
        _require(self.dataset in DATASETS, "dataset", self.dataset, f"one of {DATASETS}")
        _require(bool(self.data_dir), "data_dir", self.data_dir, "a dataset folder")
        _require(self.trial in REGDB_TRIALS, "trial", self.trial, "a RegDB trial in 1..10")
        _require(self.synthetic_ids >= 0, "synthetic_ids", self.synthetic_ids, ">= 0")
        _require(self.synthetic_seed >= 0, "synthetic_seed", self.synthetic_seed, ">= 0")
        for flag in ("height", "width", "num_ids", "num_instances", "gan_num_ids", "gan_num_instances"):
            _require(getattr(self, flag) > 0, flag, getattr(self, flag), "a positive integer")
        _require(self.pad >= 0, "pad", self.pad, ">= 0")
        for flag in ("random_erasing", "channel_aug", "intensity_aug"):
            _require(0.0 <= getattr(self, flag) <= 1.0, flag, getattr(self, flag), "a probability in [0, 1]")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol options (SYSU-MM01: Wu et al. 2017; RegDB: AGW).

    Attributes:
      sysu_modes, sysu_shots: the SYSU-MM01 settings evaluated.
      sysu_rand_perm: path of the official ``rand_perm_cam.mat``; empty = seeded galleries.
      trials: SYSU-MM01 gallery draws averaged.
      regdb_directions: RegDB query -> gallery directions evaluated.
      batch_size: images per embedding batch.
    """

    sysu_modes: tuple = SYSU_MODES
    sysu_shots: tuple = SYSU_SHOTS
    sysu_rand_perm: str = ""
    trials: int = 10
    regdb_directions: tuple = REGDB_DIRECTIONS
    batch_size: int = 64

    def __post_init__(self):
        _require(set(self.sysu_modes) <= set(SYSU_MODES) and self.sysu_modes, "sysu_modes",
                 self.sysu_modes, f"a non-empty subset of {SYSU_MODES}")
        _require(set(self.sysu_shots) <= set(SYSU_SHOTS) and self.sysu_shots, "sysu_shots",
                 self.sysu_shots, f"a non-empty subset of {SYSU_SHOTS}")
        _require(not self.sysu_rand_perm or pathlib.Path(self.sysu_rand_perm).is_file(),
                 "sysu_rand_perm", self.sysu_rand_perm, "an existing rand_perm_cam.mat file")
        _require(self.trials > 0, "trials", self.trials, "a positive integer")
        _require(set(self.regdb_directions) <= set(REGDB_DIRECTIONS) and self.regdb_directions,
                 "regdb_directions", self.regdb_directions, f"a non-empty subset of {REGDB_DIRECTIONS}")
        _require(self.batch_size > 0, "eval_batch_size", self.batch_size, "a positive integer")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of modules F, G, V and the discriminators (paper Sec. 3, 4.2).

    Attributes:
      backbone: "resnet50" (paper) or "resnet18" (tiny CPU demos and tests).
      backbone_weights: "imagenet", a weights file path, or "none".
      backbone_widths: widths of the four ResNet stages (resnet18 only; ResNet-50
        keeps the standard widths so that ImageNet weights load).
      num_regions: n horizontal regions of Eq. 12 (0: no local-region classifiers).
      gray_input: convert images to gray before E^sl (official code).
      generation: train modules G and V (False: module F alone, Table 3 index 1, with
        no alignment term that needs generated images).
      modality_bn: one of :data:`MODALITY_BN`.
      generated_bn: one of :data:`GENERATED_BN`.
      test_features: "bn" (official) or "pool" (paper Eq. 17) test vectors.
      set_level: "shared": E^i = E^sl (the paper's SL); "separate": E^i is its own copy
        of the stem, trained only by module G (the ablation without SL, Table 3);
        "gan": separate, and E^sl trained with a modality-adversarial loss as in Dai
        et al. 2018 (the degraded SL of Table 3, index 7).
      style_dim, style_base_width, style_num_downsample, style_max_width: E^s_m.
      mlp_hidden_dim: AdaIN MLP width.
      num_res_blocks: AdaIN residual blocks of each decoder (paper 4, official 2).
      disc_num_scales, disc_num_layers, disc_base_width: multi-scale discriminators.
      variation_hidden_channels, variation_latent_channels,
        variation_num_downsample: module V.
    """

    backbone: str = "resnet50"
    backbone_weights: str = "imagenet"
    backbone_widths: tuple = DEFAULT_WIDTHS
    num_regions: int = DEFAULT_NUM_REGIONS
    gray_input: bool = False
    generation: bool = True
    modality_bn: str = "joint"
    generated_bn: str = "restore"
    test_features: str = "bn"
    set_level: str = "shared"
    style_dim: int = 128
    style_base_width: int = 32
    style_num_downsample: int = 2
    style_max_width: int = 128
    mlp_hidden_dim: int = 256
    num_res_blocks: int = 4
    disc_num_scales: int = 2
    disc_num_layers: int = 4
    disc_base_width: int = 32
    variation_hidden_channels: int = 256
    variation_latent_channels: int = 64
    variation_num_downsample: int = 1

    def __post_init__(self):
        _require(self.backbone in BACKBONES, "backbone", self.backbone, f"one of {BACKBONES}")
        _require(self.backbone == "resnet50" or self.backbone_weights == "none", "backbone_weights",
                 self.backbone_weights, f"'none' for --backbone={self.backbone}")
        _require(self.backbone_weights in ("imagenet", "none") or pathlib.Path(self.backbone_weights).is_file(),
                 "backbone_weights", self.backbone_weights, "'imagenet', 'none' or an existing weights file")
        _require(len(self.backbone_widths) == 4 and all(w > 0 for w in self.backbone_widths), "backbone_widths",
                 self.backbone_widths, "4 positive integers")
        _require(self.backbone == "resnet18" or tuple(self.backbone_widths) == DEFAULT_WIDTHS,
                 "backbone_widths", self.backbone_widths, f"{DEFAULT_WIDTHS} for resnet50")
        _require(self.num_regions >= 0, "num_regions", self.num_regions, ">= 0")
        _require(self.test_features in TEST_FEATURES, "test_features", self.test_features,
                 f"one of {TEST_FEATURES}")
        _require(self.set_level in SET_LEVEL_SHARING, "sl", self.set_level, f"one of {SET_LEVEL_SHARING}")
        _require(self.modality_bn in MODALITY_BN, "modality_bn", self.modality_bn, f"one of {MODALITY_BN}")
        _require(self.generated_bn in GENERATED_BN, "generated_bn", self.generated_bn, f"one of {GENERATED_BN}")
        for flag in ("style_dim", "style_base_width", "style_max_width", "mlp_hidden_dim", "disc_num_scales",
                     "disc_num_layers", "disc_base_width", "variation_hidden_channels",
                     "variation_latent_channels"):
            _require(getattr(self, flag) > 0, flag, getattr(self, flag), "a positive integer")
        for flag in ("style_num_downsample", "num_res_blocks", "variation_num_downsample"):
            _require(getattr(self, flag) >= 0, flag, getattr(self, flag), ">= 0")

    @property
    def content_channels(self):
        """Channels of E^sl's maps M^i (256 for ResNet-50's layer1)."""
        return (4 if self.backbone == "resnet50" else 1) * self.backbone_widths[0]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights and options of the losses of Eqs. 8 and 16 (``jsia_tf.losses``).

    Attributes:
      lambda_recon, lambda_cyc, lambda_gan: Eq. 8. Paper: 1 on the reconstruction and
        lambda_cyc on the cycle term (it writes lambda_cyc on the GAN term too, a typo);
        official: 10, 10 and 1.
      lambda_il, lambda_lr, lambda_ui: Eq. 16 (0 turns the term off: the IL / LR / UI
        ablations of Table 3). The paper cross-validates them without giving values;
        0.01 is the official instance-level alignment weight.
      triplet_margin, label_smoothing: Eq. 13 (official 0.3, 0.1).
      il_convention: Eqs. 11, 12, "paper" or "official" (``losses.instance_alignment_loss``).
      variation_distribution: Eq. 10, "paper" or "kl".
      ui_direction: Eq. 15, "paper" or "target_first".
      instance_alignment: Eq. 11 on (--il); off, the term is not computed at all,
        which trains like lambda_il = 0 (Table 3's "without IL").
      local_alignment: Eq. 12 on generated pairs ("paired", the paper), on the real
        unpaired RGB / IR images of the same identity ("unpaired", Table 3 index 8,
        ``losses.unpaired_local_alignment_loss``) or not computed ("off").
      unseen_identity: Eq. 15 on (--ui); off, not computed (like lambda_ui = 0).
      lambda_local_id: weight of the label-smoothed identity loss of each local-region
        classifier C^k on the stripes of the real re-ID images (PCB, which Sec. 3.3's LR
        follows; averaged over the n regions). Without it the C^k are trained by the
        Eq. 12 KL term alone and stay at their initialisation.
      lambda_modality: weight of the modality-adversarial term of E^sl
        (``losses.lsgan_modality_confusion_loss``; ``ModelConfig.set_level == "gan"``
        only).
    """

    lambda_recon: float = 1.0
    lambda_cyc: float = 10.0
    lambda_gan: float = 1.0
    lambda_il: float = 0.01
    lambda_lr: float = 0.01
    lambda_ui: float = 0.01
    triplet_margin: float = 0.3
    label_smoothing: float = 0.1
    il_convention: str = "paper"
    variation_distribution: str = "paper"
    ui_direction: str = "paper"
    instance_alignment: bool = True
    local_alignment: str = "paired"
    unseen_identity: bool = True
    lambda_local_id: float = 1.0
    lambda_modality: float = 1.0

    def __post_init__(self):
        for flag in ("lambda_recon", "lambda_cyc", "lambda_gan", "lambda_il", "lambda_lr", "lambda_ui",
                     "triplet_margin", "lambda_local_id", "lambda_modality"):
            _require(getattr(self, flag) >= 0, flag, getattr(self, flag), ">= 0")
        _require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", self.label_smoothing, "a value in [0, 1)")
        _require(self.il_convention in ALIGNMENT_CONVENTIONS, "il_convention", self.il_convention,
                 f"one of {ALIGNMENT_CONVENTIONS}")
        _require(self.variation_distribution in VARIATION_DISTRIBUTIONS, "variation_distribution",
                 self.variation_distribution, f"one of {VARIATION_DISTRIBUTIONS}")
        _require(self.ui_direction in UNSEEN_ID_DIRECTIONS, "ui_direction", self.ui_direction,
                 f"one of {UNSEEN_ID_DIRECTIONS}")
        _require(self.local_alignment in LOCAL_ALIGNMENTS, "lr_align", self.local_alignment,
                 f"one of {LOCAL_ALIGNMENTS}")


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase (the schedule is data).

    Attributes:
      name: e.g. "pretrain_g", "joint".
      epochs: length in epochs (``TrainConfig.steps_per_epoch`` steps each).
      groups: the variable groups stepped in this phase (a subset of ``GROUPS``); a loss
        term is computed only when it updates one of them.
      lr_decay_epochs: epochs into this phase at which the learning rate is multiplied
        by ``TrainConfig.lr_decay_factor`` (paper: 30 epochs into joint training).
    """

    name: str
    epochs: int
    groups: tuple
    lr_decay_epochs: tuple = ()

    def __post_init__(self):
        _require(self.epochs >= 0, _PHASE_FLAGS.get(self.name, "phases"), self.epochs, ">= 0")
        _require(bool(self.groups) and set(self.groups) <= set(GROUPS), "phases", self.groups,
                 f"a non-empty subset of {GROUPS}")
        _require(all(0 < e for e in self.lr_decay_epochs), "lr_decay_epochs", self.lr_decay_epochs,
                 "positive epochs")


def paper_phases(pretrain_epochs=100, joint_epochs=50, lr_decay_epochs=(30,), generation=True):
    """The paper's schedule (Sec. 4.2): G pre-trained, then everything jointly.

    ``generation=False`` (module F alone): only the joint phase, stepping F's groups.
    """
    if not generation:
        return (Phase(JOINT_PHASE, joint_epochs, REID_GROUPS, tuple(lr_decay_epochs)),)
    return (Phase(PRETRAIN_PHASE, pretrain_epochs, PRETRAIN_GROUPS),
            Phase(JOINT_PHASE, joint_epochs, GROUPS, tuple(lr_decay_epochs)))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, checkpoints and logging.

    Attributes:
      phases: the schedule, a tuple of :class:`Phase` run in order.
      steps_per_epoch: steps per epoch (official: 200 iterations).
      lr, beta1, beta2, weight_decay: AdamW of module F's groups (:data:`REID_GROUPS`);
        official: 4.5e-4, 0.9, 0.999, 5e-4 (paper: Adam 2e-4, 0.5, 0.999 everywhere).
      gan_lr, gan_beta1, gan_beta2, gan_weight_decay: AdamW of the other groups (G, V,
        the discriminators); official: 1e-4, 0.5, 0.999, 1e-4.
      warmup_steps: module F's learning rate rises linearly from lr / warmup_steps to
        lr over its first steps (0: none), counted from the first step that steps F.
      lr_decay_factor: learning-rate multiplier at each ``Phase.lr_decay_epochs``.
      checkpoint_every: steps between checkpoints (the last step is always saved).
      keep_checkpoints: checkpoints kept in ``<run_dir>/checkpoints``.
      log_every: steps between progress lines and scalar summaries.
      image_every: steps between image summaries (0: never).
      eval_every: steps between evaluations on the test set during training, logged
        to TensorBoard and ``<run_dir>/eval_history.json`` (0: only at the end).
      strategy: "default" (one device), "mirrored" (tf.distribute.MirroredStrategy
        over every GPU, or over ``cpu_replicas`` logical CPUs) or "multi_worker"
        (tf.distribute.MultiWorkerMirroredStrategy configured from TF_CONFIG).
      cpu_replicas: with "mirrored", split the CPU into this many logical devices
        (0: use the visible GPUs); for testing the distributed path on a CPU.
      collective_timeout_s: with "multi_worker", a collective (all-reduce, all-gather)
        that waits longer than this for a peer fails the step, so a worker that is stuck
        without dying (the coordination service already catches one that died) ends the
        run instead of hanging it (0: no limit). It must exceed the longest time one
        worker spends between collectives while the others wait: tracing a step
        function, the chief's evaluation (``eval_every``), a checkpoint.
      mixed_precision: Keras dtype policy, "float32", "mixed_bfloat16" or
        "mixed_float16" (dynamic loss scaling per variable group, see
        ``jsia_tf.trainer``).
      optimizer: "adam" (paper) or "sgd" (plain SGD at ``lr``: for testing that
        distributed gradients are scaled right, which Adam would hide).
      jit_compile: compile the step functions with XLA.
      profile_steps: (first, last) global steps traced by the TensorFlow profiler
        into ``<run_dir>/plugins/profile`` (empty: no profiling).
    """

    phases: tuple = paper_phases()
    steps_per_epoch: int = 200
    lr: float = 4.5e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 5e-4
    gan_lr: float = 1e-4
    gan_beta1: float = 0.5
    gan_beta2: float = 0.999
    gan_weight_decay: float = 1e-4
    warmup_steps: int = 0
    lr_decay_factor: float = 0.1
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    image_every: int = 1000
    eval_every: int = 0
    strategy: str = "default"
    cpu_replicas: int = 0
    collective_timeout_s: float = 1800.0
    mixed_precision: str = "float32"
    optimizer: str = "adam"
    jit_compile: bool = False
    profile_steps: tuple = ()

    def __post_init__(self):
        _require(bool(self.phases), "phases", self.phases, "at least one phase")
        _require(self.steps_per_epoch > 0, "steps_per_epoch", self.steps_per_epoch, "a positive integer")
        for prefix in ("", "gan_"):
            _require(getattr(self, f"{prefix}lr") > 0, f"{prefix}lr", getattr(self, f"{prefix}lr"), "> 0")
            for flag in (f"{prefix}beta1", f"{prefix}beta2"):
                _require(0 <= getattr(self, flag) < 1, flag, getattr(self, flag), "a value in [0, 1)")
            flag = f"{prefix}weight_decay"
            _require(getattr(self, flag) >= 0, flag, getattr(self, flag), ">= 0")
        _require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        _require(0 < self.lr_decay_factor <= 1, "lr_decay_factor", self.lr_decay_factor, "a value in (0, 1]")
        for flag in ("checkpoint_every", "keep_checkpoints", "log_every"):
            _require(getattr(self, flag) > 0, flag, getattr(self, flag), "a positive integer")
        _require(self.image_every >= 0, "image_every", self.image_every, ">= 0")
        _require(self.eval_every >= 0, "eval_every", self.eval_every, ">= 0")
        _require(self.strategy in STRATEGIES, "strategy", self.strategy, f"one of {STRATEGIES}")
        _require(self.cpu_replicas >= 0, "cpu_replicas", self.cpu_replicas, ">= 0")
        _require(self.collective_timeout_s >= 0, "collective_timeout_s", self.collective_timeout_s,
                 "seconds >= 0 (0: no limit)")
        _require(self.mixed_precision in PRECISIONS, "mixed_precision", self.mixed_precision,
                 f"one of {PRECISIONS}")
        _require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        _require(not self.profile_steps or (len(self.profile_steps) == 2 and
                                            0 < self.profile_steps[0] <= self.profile_steps[1]),
                 "profile_steps", self.profile_steps, "two steps FIRST,LAST with 0 < FIRST <= LAST (or empty)")

    @property
    def total_steps(self):
        return sum(phase.epochs for phase in self.phases) * self.steps_per_epoch

    def phase_at(self, step):
        """(phase, epoch within the phase) of global step ``step`` (0-based)."""
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step {step} is outside the schedule's {self.total_steps} steps")
        epoch = step // self.steps_per_epoch
        for phase in self.phases:
            if epoch < phase.epochs:
                return phase, epoch
            epoch -= phase.epochs
        raise AssertionError("unreachable")

    def optimizer_settings(self, group):
        """(lr, beta1, beta2, weight_decay) of ``group``'s optimizer."""
        prefix = "" if group in REID_GROUPS else "gan_"
        return tuple(getattr(self, f"{prefix}{name}") for name in ("lr", "beta1", "beta2", "weight_decay"))

    def learning_rates_at(self, step):
        """{group: learning rate} at global step ``step`` (0-based).

        Each group's base rate, times ``lr_decay_factor`` for each of the phase's
        ``lr_decay_epochs`` passed; module F's groups also warm up over their first
        ``warmup_steps`` steps.
        """
        phase, epoch = self.phase_at(step)
        decay = self.lr_decay_factor ** sum(epoch >= e for e in phase.lr_decay_epochs)
        rates = {group: self.optimizer_settings(group)[0] * decay for group in GROUPS}
        if self.warmup_steps:
            first = 0  # the first step of the first phase that steps F
            for p in self.phases:
                if set(REID_GROUPS) & set(p.groups):
                    break
                first += p.epochs * self.steps_per_epoch
            warmup = min(1.0, (max(step - first, 0) + 1) / self.warmup_steps)
            rates.update({group: rates[group] * warmup for group in REID_GROUPS})
        return rates


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything one run needs.

    Attributes:
      run_dir: checkpoints, TensorBoard events, config.json and metrics go here.
      data: dataset and input pipeline.
      eval: evaluation protocol.
      model: network sizes.
      loss: loss weights and conventions.
      train: schedule, optimizers, checkpoints, logging.
    """

    run_dir: str
    data: DataConfig
    eval: EvalConfig = EvalConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        _require(bool(self.run_dir), "run_dir", self.run_dir, "a run folder")
        # E^sl downsamples by 4 and the decoders upsample twice (x2): the generated
        # images have the input size only if it is a multiple of 4.
        for flag in ("height", "width"):
            _require(getattr(self.data, flag) % 4 == 0, flag, getattr(self.data, flag), "a multiple of 4")
        if not self.model.generation:  # module F alone: no term may need generated images
            loss = self.loss
            for ok, flag, value, expected in (
                    (not loss.instance_alignment, "il", True, "false (no generated pairs without module G)"),
                    (loss.local_alignment != "paired" or not self.model.num_regions, "lr_align", "paired",
                     "'off' or 'unpaired' (no generated pairs without module G)"),
                    (not loss.unseen_identity, "ui", True, "false (no mixed images without modules G and V)"),
                    (self.model.set_level != "gan", "sl", "gan", "'shared' or 'separate' without module G")):
                _require(ok, flag, value, f"{expected} with --generation=false")
            _require(all(set(p.groups) <= set(REID_GROUPS) for p in self.train.phases), "generation", False,
                     "phases that step only module F's groups")
        # Whole identities per replica: checked against the strategy's replica count once it
        # exists (distribute.check_replica_split), whatever the strategy.

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def save(self, path):
        pathlib.Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path):
        """The Config that :meth:`save` wrote to ``path`` (a run's config.json)."""
        try:
            raw = json.loads(pathlib.Path(path).read_text())
            train = dict(raw["train"], phases=tuple(Phase(**_tuples(phase)) for phase in raw["train"]["phases"]))
            return cls(run_dir=raw["run_dir"], data=DataConfig(**_tuples(raw["data"])),
                       eval=EvalConfig(**_tuples(raw["eval"])), model=ModelConfig(**_tuples(raw["model"])),
                       loss=LossConfig(**_tuples(raw["loss"])), train=TrainConfig(**_tuples(train)))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a jsia_tf run config ({err})") from err


def _tuples(fields):
    """JSON lists back to the tuples the frozen dataclasses hold."""
    return {name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()}
