"""The run configuration: frozen, validated dataclasses.

Each option is a field written once, with its default, help and choices
(:func:`option`); every entry point defines its flags from these fields
(:mod:`jsia_tf.config_flags`), and ``train.py`` turns its flags into a :class:`Config`
once; nothing below the entry points reads absl flags. Validation names the
flag and the value it rejects. The resolved config is written to
``<run_dir>/config.json``. Imports neither TensorFlow nor Keras.
"""

import dataclasses
import json
import pathlib

from jsia_tf.terms import TERMS

# The choices of every option live here, so that importing the config needs neither
# TensorFlow nor Keras; the modules that act on a choice import it from here.
DATASETS = ("sysu", "regdb")  # the evaluation protocols too
MODALITIES = ("rgb", "ir")  # the keys of every per-modality dict (batches, module G's outputs)
SYSU_MODES = ("all", "indoor")  # search modes; eval.protocols maps each to its gallery cameras
SYSU_SHOTS = (1, 10)  # single-shot, multi-shot: gallery images per (person, camera)
REGDB_DIRECTIONS = ("v2t", "t2v")  # visible query -> thermal gallery, and back
SYSU_TRIALS = 10  # gallery draws of the SYSU-MM01 protocol (rows of rand_perm_cam.mat)
SYSU_IR_CAMS = (3, 6)  # SYSU-MM01's IR cameras (3 indoor, 6 outdoor); data.records has the RGB ones
SYSU_SAME_ROOM = {3: 2}  # IR camera -> the RGB camera filming the same room, never matched against it
SERVED_MODEL = "jsia"  # the embedder's name in TF Serving's model config (serving/models.config)
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
# "auto": mixed_bfloat16 on a CPU with native bfloat16 arithmetic (AVX512-BF16 or AMX), float32
# elsewhere (jsia_tf.train.resolve_precision); a run's config.json records what it resolved to.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
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
OBJECTIVES = tuple(dict.fromkeys(term.objective for term in TERMS))  # jsia_tf.terms.Term.objective
# The objectives of G's pre-training: module G's, its discriminators' and module V's.
# When it also steps E^sl (paper_phases' pretrain_set_level), only module G's terms
# reach it, not the identity terms.
PRETRAIN_OBJECTIVES = ("generator", "discriminator", "variation")
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


def option(default, help, flag=None, choices=None):  # pylint: disable=redefined-builtin
    """A field that is also the flag ``--<flag or the field's name>`` of ``jsia_tf.train``.

    Its default, help and choices are written here once; ``train`` defines the flag
    from them (``choices``: an enum flag) and ``__post_init__`` checks the value.
    """
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


def flag_name(field):
    """The flag of a dataclass field made by :func:`option`."""
    return field.metadata["flag"] or field.name


def _check_choices(config):
    """Each option of the dataclass ``config`` that has choices holds one of them."""
    for field in dataclasses.fields(config):
        choices = field.metadata.get("choices")
        if choices:
            value = getattr(config, field.name)
            _require(value in choices, flag_name(field), value, f"one of {choices}")


def default(cls, name):
    """The default of the option ``name`` of the dataclass ``cls``, for a command-line
    flag of another entry point that means the same."""
    return {field.name: field.default for field in dataclasses.fields(cls)}[name]


def check_choice(name, value, choices):
    """For functions that take a choice as an argument (losses, protocols)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}")


# The schedule's flags (TrainConfig.phases is built from them, paper_phases): the paper's
# 100 epochs of G pre-training, 50 joint, the learning rate x 0.1 at joint epoch 30.
PAPER_PRETRAIN_EPOCHS, PAPER_JOINT_EPOCHS, PAPER_LR_DECAY_EPOCHS = 100, 50, (30,)
# E^i = E^sl is part of the generation module the paper pre-trains (paper_phases).
PAPER_PRETRAIN_SET_LEVEL = True


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (``jsia_tf.data.pipeline.augment_image``); a probability 0 turns one off."""

    flip: bool = option(True, "Random horizontal flip with probability 1/2 (the paper's augmentation).")
    pad: int = option(10, "Zero padding (black pixels) on each side before the random crop back to the input "
                          "size (0: no crop).")
    random_erasing: float = option(0.5, "Probability of erasing one rectangle (Zhong et al. 2017) with the "
                                        "ImageNet mean pixel.")
    channel_aug: float = option(0.0, "Channel augmentation probability (RGB images).")
    intensity_aug: float = option(0.0, "Random intensity remapping probability (inversion, gamma; both "
                                       "modalities).")

    def __post_init__(self):
        _require(self.pad >= 0, "pad", self.pad, ">= 0")
        for flag in ("random_erasing", "channel_aug", "intensity_aug"):
            _require(0.0 <= getattr(self, flag) <= 1.0, flag, getattr(self, flag), "a probability in [0, 1]")


@dataclasses.dataclass(frozen=True)
class DataConfig(AugmentConfig):
    """Dataset, image size, the cross-modal identity sampler (paper Sec. 4.2) and the
    training augmentation (the fields of :class:`AugmentConfig`)."""

    dataset: str = option("regdb", "Dataset layout and evaluation protocol.", choices=DATASETS)
    data_dir: str = option("", "Dataset root folder.")
    trial: int = option(1, "RegDB train/test split, 1..10.")
    synthetic_ids: int = option(
        0, "If > 0 and --data_dir holds no dataset yet (or one rendered with other settings), generate a synthetic "
        "one with this many identities there first (demo and smoke presets).")
    synthetic_test_ids: int = option(
        0, "With --synthetic_ids and --dataset=sysu: the test persons, pids 1..N, the same persons whatever "
        "--synthetic_ids, so that datasets of more training persons share one test set (0: 20% of the ids).")
    synthetic_seed: int = option(0, "Seed of the synthetic dataset; not --seed, so that runs with several training "
                                    "seeds share one benchmark.")
    height: int = option(256, "Network input height (paper: 256).")
    width: int = option(128, "Network input width (paper: 128).")
    num_ids: int = option(16, "P: identities per re-ID batch (paper: 16).")
    num_instances: int = option(4, "K: images per identity and modality in a re-ID batch (paper: 4; 128 images).")
    gan_num_ids: int = option(3, "Identities per generation batch (official code: 3).")
    gan_num_instances: int = option(3, "Images per identity and modality in a generation batch (official code: 3).")
    seed: int = option(0, "Seeds the sampler, the augmentation and the weight initialisation.")

    def __post_init__(self):
        super().__post_init__()
        _check_choices(self)
        _require(bool(self.data_dir), "data_dir", self.data_dir, "a dataset folder")
        _require(self.trial in REGDB_TRIALS, "trial", self.trial, "a RegDB trial in 1..10")
        _require(self.synthetic_ids >= 0, "synthetic_ids", self.synthetic_ids, ">= 0")
        _require(self.synthetic_seed >= 0, "synthetic_seed", self.synthetic_seed, ">= 0")
        _require(not self.synthetic_test_ids or (self.dataset == "sysu" and
                                                 0 < self.synthetic_test_ids <= self.synthetic_ids - 2),
                 "synthetic_test_ids", self.synthetic_test_ids,
                 "0, or with --dataset=sysu a number of test persons in 1..--synthetic_ids - 2")
        for flag in ("height", "width", "num_ids", "num_instances", "gan_num_ids", "gan_num_instances"):
            _require(getattr(self, flag) > 0, flag, getattr(self, flag), "a positive integer")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol options (SYSU-MM01: Wu et al. 2017; RegDB: AGW)."""

    sysu_modes: tuple[str, ...] = option(SYSU_MODES, "SYSU-MM01 search modes evaluated.")
    sysu_shots: tuple[int, ...] = option(SYSU_SHOTS, "SYSU-MM01 gallery shots evaluated.")
    sysu_rand_perm: str = option("", "Path of the official rand_perm_cam.mat (empty: seeded galleries).")
    trials: int = option(SYSU_TRIALS, "SYSU-MM01 gallery draws averaged.")
    regdb_directions: tuple[str, ...] = option(REGDB_DIRECTIONS, "RegDB directions: v2t (visible query), t2v.")
    batch_size: int = option(64, "Images per embedding batch.", flag="eval_batch_size")

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
    """Sizes and switches of modules F, G, V and the discriminators (paper Sec. 3, 4.2)."""

    backbone: str = option("resnet50", "Re-ID backbone: resnet50 (paper) or resnet18 (tiny CPU demos and tests).",
                           choices=BACKBONES)
    backbone_weights: str = option("imagenet", "'imagenet', 'none' or a keras.applications ResNet50 weights file.")
    backbone_widths: tuple[int, ...] = option(
        DEFAULT_WIDTHS, "Widths of the four ResNet stages (resnet18 only; ResNet-50 keeps the standard widths so "
        "that ImageNet weights load).")
    num_regions: int = option(DEFAULT_NUM_REGIONS, "Horizontal regions n of Eq. 12 (0: no local-region "
                                                   "classifiers).")
    gray_input: bool = option(False, "Gray images into E^sl (official code).")
    generation: bool = option(True, "Train modules G and V (false: module F alone, Table 3 row 1, with no "
                                    "alignment term that needs generated images).")
    modality_bn: str = option("joint", "How batch norm in E^sl / E^il sees the re-ID batch: both modalities in one "
                                       "call (joint, as at test time) or one call per modality (separate, official).",
                              choices=MODALITY_BN)
    generated_bn: str = option(
        "restore", "What F's batch-norm moving statistics learn from generated pairs, cycle inputs and mixed "
        "images: restore (batch statistics, the moving ones put back), inference (normalised with the moving "
        "statistics) or update (official).", choices=GENERATED_BN)
    test_features: str = option("bn", "The Eq. 17 vector: the classifier's batch-norm output (bn, official) or "
                                      "V = GAP(T) (pool, the paper's text).", choices=TEST_FEATURES)
    sl: str = option(
        "shared", "Set-level alignment (Table 3): E^i = E^sl (shared, the paper's SL); a separate E^i trained only "
        "by module G (separate, no SL); or separate with E^sl trained modality-adversarially as in Dai et al. 2018 "
        "(gan, the degraded SL of index 7).", choices=SET_LEVEL_SHARING)
    generation_scale: int = option(
        1, "Module G works on images this many times smaller than module F's: 1 (the paper: both at 256x128) or 2 "
        "(the official code: 128x64 GAN images, upsampled for F). E^i reads F's full-size image either way.")
    style_dim: int = option(128, "Length of the style code M^s, E^s_m's output.")
    style_base_width: int = option(32, "First width of the style encoders.")
    style_num_downsample: int = option(2, "Strided convs of the style encoders (paper: 2).")
    style_max_width: int = option(128, "Maximum width of the style encoders.")
    mlp_hidden_dim: int = option(256, "AdaIN MLP width.")
    num_res_blocks: int = option(4, "AdaIN residual blocks per decoder (paper: 4, official: 2).")
    decoder_width: int = option(0, "Width of the decoders' residual blocks, halved by each upsampling (0: the "
                                   "content channels of E^sl, as in the paper: 256 for ResNet-50).")
    disc_num_scales: int = option(2, "Scales of the multi-scale discriminators.")
    disc_num_layers: int = option(4, "Strided convs per discriminator scale.")
    disc_base_width: int = option(32, "First width of the discriminators.")
    variation_hidden_channels: int = option(256, "Module V width.")
    variation_latent_channels: int = option(64, "Module V latent channels.")
    variation_num_downsample: int = option(1, "Module V strided convs.")

    def __post_init__(self):
        _check_choices(self)
        _require(self.backbone == "resnet50" or self.backbone_weights == "none", "backbone_weights",
                 self.backbone_weights, f"'none' for --backbone={self.backbone}")
        _require(self.backbone_weights in ("imagenet", "none") or pathlib.Path(self.backbone_weights).is_file(),
                 "backbone_weights", self.backbone_weights, "'imagenet', 'none' or an existing weights file")
        _require(len(self.backbone_widths) == 4 and all(w > 0 for w in self.backbone_widths), "backbone_widths",
                 self.backbone_widths, "4 positive integers")
        _require(self.backbone == "resnet18" or tuple(self.backbone_widths) == DEFAULT_WIDTHS,
                 "backbone_widths", self.backbone_widths, f"{DEFAULT_WIDTHS} for resnet50")
        _require(self.num_regions >= 0, "num_regions", self.num_regions, ">= 0")
        _require(self.generation_scale in (1, 2), "generation_scale", self.generation_scale, "1 or 2")
        for flag in ("style_dim", "style_base_width", "style_max_width", "mlp_hidden_dim", "disc_num_scales",
                     "disc_num_layers", "disc_base_width", "variation_hidden_channels",
                     "variation_latent_channels"):
            _require(getattr(self, flag) > 0, flag, getattr(self, flag), "a positive integer")
        for flag in ("style_num_downsample", "num_res_blocks", "variation_num_downsample", "decoder_width"):
            _require(getattr(self, flag) >= 0, flag, getattr(self, flag), ">= 0")

    @property
    def content_channels(self):
        """Channels of E^sl's maps M^i (256 for ResNet-50's layer1)."""
        return (4 if self.backbone == "resnet50" else 1) * self.backbone_widths[0]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights and options of the losses of Eqs. 8 and 16 (``jsia_tf.losses``).

    Eq. 8: the paper weighs the reconstruction by 1 and the cycle term by lambda_cyc (it
    writes lambda_cyc on the GAN term too, a typo); official: 10, 10 and 1. Eq. 16: the
    paper cross-validates lambda_il / lambda_lr / lambda_ui (here lambda_il, lambda_local,
    lambda_ui) without giving values; 0.01 is the official instance-level alignment
    weight. Turning a term off (--il, --local, --ui) does not compute it at all, which
    trains like its weight 0 (Table 3).
    """

    lambda_recon: float = option(1.0, "Eq. 8 reconstruction weight (paper 1, official 10).")
    lambda_cyc: float = option(10.0, "Eq. 8 cycle weight (official 10).")
    lambda_gan: float = option(1.0, "Eq. 8 GAN weight (official 1).")
    lambda_code: float = option(
        0.0, "Weight of the L1 between the generated images' re-encoded content and style codes and the codes "
        "they were decoded from (the official code's MUNIT term, weight 1, which the paper does not have; 0: the "
        "paper's Eq. 8).")
    lambda_il: float = option(0.01, "Eq. 16 instance-level alignment weight (official 0.01; 0: no IL).")
    lambda_local: float = option(0.01, "Eq. 16 local-region alignment weight, the paper's lambda_lr (0: no LR).")
    lambda_ui: float = option(0.01, "Eq. 16 unseen-identity weight (0: no UI).")
    triplet_margin: float = option(0.3, "Eq. 13 triplet margin (official 0.3).")
    label_smoothing: float = option(0.1, "Eq. 13 label smoothing (official 0.1; 0: the paper's cross-entropy).")
    il_convention: str = option("paper", "Eqs. 11, 12 convention (losses.instance_alignment_loss).",
                                choices=ALIGNMENT_CONVENTIONS)
    variation_distribution: str = option("paper", "Eq. 10 distribution term (losses.variation_loss).",
                                         choices=VARIATION_DISTRIBUTIONS)
    ui_direction: str = option("paper", "Eq. 15 KL direction (losses.unseen_identity_loss).",
                               choices=UNSEEN_ID_DIRECTIONS)
    il: bool = option(True, "Eq. 11 instance-level alignment (Table 3 IL).")
    local: str = option(
        "paired", "Eq. 12 local regions on generated pairs (paired, the paper), on the real unpaired RGB / IR "
        "images of the same identity (unpaired, Table 3 index 8) or off (no Eq. 12; the C^k keep their identity "
        "loss, --lambda_local_id, unless --num_regions=0, which Table 3's rows without LR set).",
        choices=LOCAL_ALIGNMENTS)
    ui: bool = option(True, "Eq. 15 paired images of unseen identities (Table 3 UI).")
    lambda_local_id: float = option(
        1.0, "Weight of each local-region classifier C^k's label-smoothed identity loss on the stripes of the real "
        "re-ID images (PCB, which Sec. 3.3's LR follows; the mean over the n regions). 0: the C^k are trained by "
        "Eq. 12's KL alone and stay at their initialisation.")
    lambda_modality: float = option(1.0, "Weight of E^sl's modality-adversarial term (--sl=gan only).")

    def __post_init__(self):
        _check_choices(self)
        for flag in (*dict.fromkeys(term.weight for term in TERMS if term.weight), "triplet_margin"):
            _require(getattr(self, flag) >= 0, flag, getattr(self, flag), ">= 0")
        _require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", self.label_smoothing, "a value in [0, 1)")


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
      objectives: the objectives (a subset of ``OBJECTIVES``) whose terms the phase
        computes; empty: every one routed to its groups.
    """

    name: str
    epochs: int
    groups: tuple
    lr_decay_epochs: tuple = ()
    objectives: tuple = ()

    def __post_init__(self):
        _require(self.epochs >= 0, _PHASE_FLAGS.get(self.name, "phases"), self.epochs, ">= 0")
        _require(bool(self.groups) and set(self.groups) <= set(GROUPS), "phases", self.groups,
                 f"a non-empty subset of {GROUPS}")
        _require(all(0 < e for e in self.lr_decay_epochs), "lr_decay_epochs", self.lr_decay_epochs,
                 "positive epochs")
        _require(set(self.objectives) <= set(OBJECTIVES), "phases", self.objectives, f"a subset of {OBJECTIVES}")


def paper_phases(pretrain_epochs=PAPER_PRETRAIN_EPOCHS, joint_epochs=PAPER_JOINT_EPOCHS,
                 lr_decay_epochs=PAPER_LR_DECAY_EPOCHS, generation=True, pretrain_set_level=PAPER_PRETRAIN_SET_LEVEL):
    """The paper's schedule (Sec. 4.2): G pre-trained, then everything jointly.

    ``generation=False`` (module F alone): only the joint phase, stepping F's groups.
    ``pretrain_set_level``: G's pre-training also steps E^sl = E^i with module G's
    terms. The paper pre-trains "the generation module", of which E^i is a part; the
    official code leaves the stem out of its GAN warm-up, where it holds ImageNet
    weights. From random weights a frozen stem is a random content code that the
    decoders cannot invert (docs/FIDELITY.md, docs/RESULTS.md).
    """
    if not generation:
        return (Phase(JOINT_PHASE, joint_epochs, REID_GROUPS, tuple(lr_decay_epochs)),)
    pretrain_groups = PRETRAIN_GROUPS + (("reid_set_level",) if pretrain_set_level else ())
    return (Phase(PRETRAIN_PHASE, pretrain_epochs, pretrain_groups, objectives=PRETRAIN_OBJECTIVES),
            Phase(JOINT_PHASE, joint_epochs, GROUPS, tuple(lr_decay_epochs)))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, checkpoints and logging.

    ``phases`` is the schedule, a tuple of :class:`Phase` run in order (the flags
    --pretrain_epochs, --joint_epochs and --lr_decay_epochs build the paper's,
    :func:`paper_phases`). Module F's groups (:data:`REID_GROUPS`) take ``lr``,
    ``beta1``, ``beta2``, ``weight_decay``; the others (G, V, the discriminators) the
    ``gan_`` ones, as in the official code (the paper: Adam 2e-4, 0.5, 0.999 everywhere).
    """

    phases: tuple = paper_phases()
    steps_per_epoch: int = option(200, "Steps per epoch (official: 200 iterations).")
    lr: float = option(4.5e-4, "Re-ID (module F) AdamW learning rate (official 4.5e-4; paper 2e-4).")
    beta1: float = option(0.9, "Re-ID AdamW beta1 (official 0.9; paper 0.5).")
    beta2: float = option(0.999, "Re-ID AdamW beta2.")
    weight_decay: float = option(5e-4, "Re-ID decoupled weight decay (official 5e-4, as an L2 term).")
    gan_lr: float = option(1e-4, "G, V and discriminators' AdamW learning rate (official 1e-4).")
    gan_beta1: float = option(0.5, "G, V and discriminators' AdamW beta1 (official 0.5).")
    gan_beta2: float = option(0.999, "G, V and discriminators' AdamW beta2.")
    gan_weight_decay: float = option(1e-4, "G, V and discriminators' weight decay (official 1e-4).")
    generation_every: int = option(
        1, "In joint training, module G, V and the discriminators, and module F's terms on generated images (Eqs. "
        "11, 12, 15), are computed and stepped on every this many steps; module F's identity terms (Eq. 13) on "
        "every step (1: every step, the paper). The generation terms are most of a joint step's cost on a CPU.")
    warmup_steps: int = option(0, "Module F's learning rate rises linearly from lr / warmup_steps to lr over its "
                                  "first steps, counted from the first step that steps F (0: none).")
    gan_warmup_steps: int = option(0, "G, V and the discriminators' learning rate rises linearly from gan_lr / "
                                      "gan_warmup_steps to gan_lr over the run's first steps (0: none).")
    lr_decay_factor: float = option(0.1, "Learning-rate multiplier at each of a phase's lr_decay_epochs.")
    checkpoint_every: int = option(1000, "Steps between checkpoints (the last step is always saved).")
    keep_checkpoints: int = option(3, "Checkpoints kept in <run_dir>/checkpoints.")
    log_every: int = option(50, "Steps between progress lines and scalar summaries.")
    image_every: int = option(1000, "Steps between image summaries (0: never).")
    eval_every: int = option(0, "Steps between test-set evaluations during training, logged to TensorBoard and "
                                "<run_dir>/eval_history.json (0: only at the end).")
    strategy: str = option("default", "default: one device; mirrored: tf.distribute.MirroredStrategy over every "
                                      "local GPU (or --cpu_replicas logical CPUs); multi_worker: "
                                      "MultiWorkerMirroredStrategy from TF_CONFIG.", choices=STRATEGIES)
    cpu_replicas: int = option(0, "With --strategy=mirrored: split the CPU into this many logical devices (0: the "
                                  "visible GPUs); for testing the distributed path on a CPU.")
    collective_timeout_s: float = option(
        1800.0, "With --strategy=multi_worker: a worker on which no training step finishes for this long (it waits "
        "in a collective for a peer) ends the run, so a worker stuck without dying does not hang it (0: no limit). "
        "It must exceed the longest time between two steps: tracing a step function, the chief's evaluation, a "
        "checkpoint.")
    mixed_precision: str = option("float32", "Keras dtype policy; mixed_float16 scales the losses dynamically per "
                                             "variable group (jsia_tf.trainer); auto: mixed_bfloat16 when training "
                                             "runs on a CPU with native bfloat16 (AVX512-BF16 or AMX), else float32.",
                                  choices=PRECISIONS)
    optimizer: str = option("adam", "adam (paper) or plain SGD at --lr (tests of distributed gradient scaling, "
                                    "which Adam's normalisation would hide).", choices=OPTIMIZERS)
    jit_compile: bool = option(False, "Compile the training steps with XLA.")
    graph_optimizer: bool = option(
        True, "TensorFlow's graph optimizer (Grappler) on the step functions, TensorFlow's default. Off, tiny "
        "networks start faster (docs/BENCHMARKS.md); keep it on for real networks, whose fused kernels and GPU "
        "layouts it makes.")
    profile_steps: tuple[int, ...] = option((), "FIRST,LAST global steps traced by the TensorFlow profiler into "
                                                "<run_dir>/plugins/profile (empty: no profiling).")

    def __post_init__(self):
        _check_choices(self)
        _require(bool(self.phases), "phases", self.phases, "at least one phase")
        _require(self.steps_per_epoch > 0, "steps_per_epoch", self.steps_per_epoch, "a positive integer")
        for prefix in ("", "gan_"):
            _require(getattr(self, f"{prefix}lr") > 0, f"{prefix}lr", getattr(self, f"{prefix}lr"), "> 0")
            for flag in (f"{prefix}beta1", f"{prefix}beta2"):
                _require(0 <= getattr(self, flag) < 1, flag, getattr(self, flag), "a value in [0, 1)")
            flag = f"{prefix}weight_decay"
            _require(getattr(self, flag) >= 0, flag, getattr(self, flag), ">= 0")
        _require(self.generation_every > 0, "generation_every", self.generation_every, "a positive integer")
        _require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        _require(self.gan_warmup_steps >= 0, "gan_warmup_steps", self.gan_warmup_steps, ">= 0")
        _require(0 < self.lr_decay_factor <= 1, "lr_decay_factor", self.lr_decay_factor, "a value in (0, 1]")
        for flag in ("checkpoint_every", "keep_checkpoints", "log_every"):
            _require(getattr(self, flag) > 0, flag, getattr(self, flag), "a positive integer")
        _require(self.image_every >= 0, "image_every", self.image_every, ">= 0")
        _require(self.eval_every >= 0, "eval_every", self.eval_every, ">= 0")
        _require(self.cpu_replicas >= 0, "cpu_replicas", self.cpu_replicas, ">= 0")
        _require(self.collective_timeout_s >= 0, "collective_timeout_s", self.collective_timeout_s,
                 "seconds >= 0 (0: no limit)")
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

    def step_phase(self, step):
        """The phase global step ``step`` runs: :meth:`phase_at`'s, except on the joint steps
        between two of module G's (``generation_every``), which step module F's groups with
        its identity terms (the objective "reid") alone."""
        phase, _ = self.phase_at(step)
        joint = "reid_instance_level" in phase.groups and set(phase.groups) - set(REID_GROUPS)
        if not joint or step % self.generation_every == 0:
            return phase
        return dataclasses.replace(phase, groups=tuple(g for g in phase.groups if g in REID_GROUPS),
                                   objectives=("reid",))

    def optimizer_settings(self, group):
        """(lr, beta1, beta2, weight_decay) of ``group``'s optimizer."""
        prefix = "" if group in REID_GROUPS else "gan_"
        return tuple(getattr(self, f"{prefix}{name}") for name in ("lr", "beta1", "beta2", "weight_decay"))

    def learning_rates_at(self, step):
        """{group: learning rate} at global step ``step`` (0-based).

        Each group's base rate, times ``lr_decay_factor`` for each of the phase's
        ``lr_decay_epochs`` passed; module F's groups also warm up over their first
        ``warmup_steps`` steps, the others over the run's first ``gan_warmup_steps``.
        """
        phase, epoch = self.phase_at(step)
        decay = self.lr_decay_factor ** sum(epoch >= e for e in phase.lr_decay_epochs)
        rates = {group: self.optimizer_settings(group)[0] * decay for group in GROUPS}
        if self.warmup_steps:
            first = 0  # the first step of the first phase that steps F's identity terms
            for p in self.phases:
                if "reid_instance_level" in p.groups:
                    break
                first += p.epochs * self.steps_per_epoch
            warmup = min(1.0, (max(step - first, 0) + 1) / self.warmup_steps)
            rates.update({group: rates[group] * warmup for group in REID_GROUPS})
        if self.gan_warmup_steps:
            warmup = min(1.0, (step + 1) / self.gan_warmup_steps)
            rates.update({group: rates[group] * warmup for group in GROUPS if group not in REID_GROUPS})
        return rates


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything one run needs: the run folder (checkpoints, TensorBoard events,
    config.json, metrics) and one section per concern."""

    run_dir: str = option(dataclasses.MISSING, "Run folder: config.json, checkpoints, TensorBoard events, metrics.")
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
        # The discriminators (built even for module F alone): each scale halves the image
        # --disc_num_layers times (4x4 stride-2 convs after a reflection pad of 1), so its
        # input must keep 2^disc_num_layers pixels a side; each further scale sees it pooled by 2.
        side = min(self.data.height, self.data.width) // self.model.generation_scale
        coarsest = side
        for _ in range(self.model.disc_num_scales - 1):
            coarsest = -(-coarsest // 2)
        _require(coarsest >= 2 ** self.model.disc_num_layers, "disc_num_layers", self.model.disc_num_layers,
                 f"at most log2 of the coarsest discriminator scale's side ({coarsest} pixels: module G's "
                 f"images are {side} pixels on their short side with --generation_scale="
                 f"{self.model.generation_scale}, pooled {self.model.disc_num_scales - 1} time(s) for "
                 f"--disc_num_scales={self.model.disc_num_scales})")
        if not self.model.generation:  # module F alone: no term may need module G's images
            conflicts = dict.fromkeys(
                f"--{term.switch.flag}={term.switch.needs_g!r} (expected {term.switch.expected})" for term in TERMS
                if term.switch and term.present(self) and self.value_of(term.switch.flag) == term.switch.needs_g)
            _require(not conflicts, "generation", False, f"module F alone, which these flags contradict: "
                     f"{'; '.join(conflicts)}")
            _require(all(set(p.groups) <= set(REID_GROUPS) for p in self.train.phases), "generation", False,
                     "phases that step only module F's groups")
        # Whole identities per replica: checked against the strategy's replica count once it
        # exists (distribute.check_replica_split), whatever the strategy.

    def value_of(self, flag):
        """The value of the option ``--flag`` in this config's sections."""
        for section in (self.data, self.eval, self.model, self.loss, self.train):
            for field in dataclasses.fields(section):
                if flag_name(field) == flag:
                    return getattr(section, field.name)
        raise KeyError(flag)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def save(self, path):
        pathlib.Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path):
        """The Config that :meth:`save` wrote to ``path`` (a run's config.json)."""
        try:
            raw = json.loads(pathlib.Path(path).read_text())
            for section, renamed in OLD_FIELDS.items():
                raw[section] = {renamed.get(name, name): value for name, value in raw[section].items()}
            train = dict(raw["train"], phases=tuple(Phase(**_tuples(phase)) for phase in raw["train"]["phases"]))
            return cls(run_dir=raw["run_dir"], data=DataConfig(**_tuples(raw["data"])),
                       eval=EvalConfig(**_tuples(raw["eval"])), model=ModelConfig(**_tuples(raw["model"])),
                       loss=LossConfig(**_tuples(raw["loss"])), train=TrainConfig(**_tuples(train)))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a jsia_tf run config ({err})") from err


# What --generation=false implies unless the flags say otherwise: module F alone has no
# generated pairs (IL, LR) nor mixed images (UI); Table 3 row 1.
MODULE_F_ALONE = {term.switch.flag: term.switch.alone for term in TERMS
                  if term.switch and term.switch.alone is not None}

# Earlier spellings, kept so that old commands and run folders still work. A flag -> the
# flag it now is (train accepts it and logs a line); a field of a run's config.json ->
# its name now, per section (Config.load).
OLD_FLAGS = {"lr_align": "local", "lambda_lr": "lambda_local"}
OLD_FIELDS = {"model": {"set_level": "sl"},
              "loss": {"instance_alignment": "il", "local_alignment": "local", "unseen_identity": "ui",
                       "lambda_lr": "lambda_local"}}


SYNTHETIC_LAYOUTS = ("regdb", "sysu")  # the on-disk layouts jsia_tf.data.synthetic writes
REGDB_IMAGES_PER_ID = 10  # images per person and modality in RegDB


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What ``python -m jsia_tf.data.synthetic`` renders (``jsia_tf.data.synthetic.generate``)."""

    layout: str = option("regdb", "On-disk layout: RegDB or SYSU-MM01.", choices=SYNTHETIC_LAYOUTS)
    num_ids: int = option(40, "Number of persons (pids 1..num_ids).")
    seed: int = option(0, "Random seed; the same seed writes byte-identical files.")
    height: int = option(256, "Image height in pixels.")
    width: int = option(128, "Image width in pixels.")
    images_per_id: int = option(REGDB_IMAGES_PER_ID, "RegDB: images per person and modality.")
    test_ids: int = option(0, "SYSU-MM01: test persons, pids 1..test_ids (0: ~20% of the ids).")
    num_workers: int = option(0, "Processes rendering persons in parallel (0: one per CPU core).")
    overwrite: bool = option(False, "Replace a dataset of this layout already in --out.")


EXPORT_FORMATS = ("saved_model", "litert", "both")
LITERT_QUANTIZATIONS = ("none", "float16", "dynamic_int8", "int8", "int8_float_head")  # jsia_tf.litert


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What ``python -m jsia_tf.export`` writes of a run."""

    format: str = option("saved_model", "SavedModel (TF Serving), LiteRT .tflite files, or both.",
                         choices=EXPORT_FORMATS)
    quantization: tuple[str, ...] = option(
        ("none",), f"LiteRT: one .tflite file per value, some of {','.join(LITERT_QUANTIZATIONS)}.")
    calibration_images: int = option(
        256, "LiteRT int8: training images (half RGB, half IR) that calibrate the activation ranges.")
    # A person crop is far smaller; without a bound one small PNG of 8000 x 8000 decodes to
    # 192 MB (server memory it keeps).
    max_pixels: int = option(2048 * 2048, "SavedModel: the largest image (height x width) its signatures accept; "
                                          "a larger one is INVALID_ARGUMENT naming its index.")

    def __post_init__(self):
        _check_choices(self)
        _require(bool(self.quantization) and set(self.quantization) <= set(LITERT_QUANTIZATIONS), "quantization",
                 ",".join(self.quantization), f"a comma-separated list of {', '.join(LITERT_QUANTIZATIONS)}")
        _require(self.max_pixels >= 1, "max_pixels", self.max_pixels, ">= 1")


# k-reciprocal re-ranking's k1, k2 and lambda: the paper's (Sec. 4.2) and the AGW evaluation's.
RERANK_K1, RERANK_K2, RERANK_LAMBDA = 20, 6, 0.3
ANALYSIS_KINDS = ("paired", "mixing", "similarity", "ranked", "quality")  # jsia_tf.analyze's figures


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """What ``python -m jsia_tf.analyze`` draws and how many (its module docstring)."""

    what: tuple[str, ...] = option(ANALYSIS_KINDS, f"Comma list of what to draw: {','.join(ANALYSIS_KINDS)}.")
    num_identities: int = option(4, "Persons in the paired figure; pairs of them in the mixing figure.")
    num_queries: int = option(4, "Queries in the ranked figure.")
    top_k: int = option(10, "Gallery images shown per query.")
    regdb_direction: str = option("v2t", "RegDB query -> gallery.", choices=REGDB_DIRECTIONS)
    seed: int = option(0, "Seeds the choice of persons, queries, quality pairs and mixing ratios.")
    batch_size: int = option(32, "Images per network call.")
    inception_weights: str = option("imagenet", "FID network: 'imagenet' or an InceptionV3 weights file.")
    fid_images: int = option(500, "At most this many test pairs for MD and FID.")
    judge_run: str = option(
        "", "quality: the run whose module F judges whether generated images keep their identity (default: the "
        "analysed run); prefer one that never trained on generated images, such as a --generation=false run on the "
        "same dataset.")

    def __post_init__(self):
        unknown = [kind for kind in self.what if kind not in ANALYSIS_KINDS]
        if unknown or not self.what:
            raise ValueError(f"--what={','.join(self.what)}: unknown {unknown}; expected a comma list of "
                             f"{','.join(ANALYSIS_KINDS)}")
        # mixing pairs two persons; FID fits a covariance: at least 2 images.
        for name, lowest in (("num_identities", 2), ("num_queries", 1), ("top_k", 1), ("batch_size", 1),
                             ("fid_images", 2)):
            if getattr(self, name) < lowest:
                raise ValueError(f"--{name}={getattr(self, name)}: expected an integer >= {lowest}")
        _check_choices(self)


@dataclasses.dataclass(frozen=True)
class ExperimentsConfig:
    """What ``python -m jsia_tf.experiments`` runs and writes (its module docstring)."""

    rows: tuple[int, ...] = option((1, 2, 3, 5, 6, 8), "Table 3 indices to run (1-8).")
    seeds: tuple[int, ...] = option((0, 1, 2), "Training seeds.")
    base_flagfile: str = option("configs/demo.flags", "Flag file every run starts from.")
    out: str = option("runs/table3", "Folder of the runs.")
    results: str = option("docs/RESULTS.md", "Markdown file whose table part is rewritten.")
    curve: str = option("docs/learning_curves.png", "Learning-curve PNG ('' : none).")
    budget_s: int = option(0, "Start no new run after this many seconds (0: no limit).")
    train_flags: tuple[str, ...] = option((), "More flags for every run, e.g. --train_flags=--eval_every=50.")
    parallel: int = option(1, "Runs at a time, each with cores / parallel threads.")
    report_only: bool = option(False, "Only read the finished runs and write the results.")

    def __post_init__(self):
        _require(self.budget_s >= 0, "budget_s", self.budget_s, "seconds >= 0 (0: no limit)")
        _require(self.parallel > 0, "parallel", self.parallel, "a positive integer")


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """How ``python -m jsia_tf.launch_local`` runs its multi-worker processes."""

    workers: int = option(2, "Worker processes.")
    timeout_s: float = option(0.0, "Stop every worker after this many seconds (0: no limit).")

    def __post_init__(self):
        _require(self.workers > 0, "workers", self.workers, "a positive integer")
        _require(self.timeout_s >= 0, "timeout_s", self.timeout_s, "seconds >= 0 (0: no limit)")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How ``python -m jsia_tf.serving.server`` serves (a loopback Predict server)."""

    port: int = option(8500, "gRPC port; 0 picks a free one.")
    host: str = option("127.0.0.1", "Address to listen on.")
    max_batch_size: int = option(256, "Largest batch accepted.")
    max_message_mb: int = option(64, "Largest message, MiB.")
    max_workers: int = option(4, "Threads answering requests.")

    def __post_init__(self):
        _require(self.port >= 0, "port", self.port, "a port >= 0 (0: a free one)")
        for flag in ("max_batch_size", "max_message_mb", "max_workers"):
            _require(getattr(self, flag) > 0, flag, getattr(self, flag), "a positive integer")


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """How ``python -m jsia_tf.serving.client`` asks the server."""

    model: str = option(SERVED_MODEL, "Model name.")
    top_k: int = option(10, "Gallery images shown per query.")
    batch_size: int = option(32, "Images per request.")
    timeout: float = option(10.0, "Seconds per request.")

    def __post_init__(self):
        for flag in ("top_k", "batch_size"):
            _require(getattr(self, flag) > 0, flag, getattr(self, flag), "a positive integer")
        _require(self.timeout > 0, "timeout", self.timeout, "seconds > 0")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """What ``python -m jsia_tf.search index|query`` does beyond the files and the model it
    is given (its module docstring)."""

    served_model: str = option(SERVED_MODEL, "With --server: the model's name in the server's config.")
    trial: int = option(1, "index --dataset=regdb: the split whose test set is indexed.")
    db: str = option("gallery.db", "Milvus Lite database file (embedded; ends with .db).")
    collection: str = option("gallery", "Milvus collection name.")
    batch_size: int = option(32, "Images per embedding call.")
    reindex: bool = option(False, "index: embed files already in the collection again (replacing them).")
    ir_cameras: tuple[int, ...] = option(SYSU_IR_CAMS, "index: cameras of IR images in a folder or list (default "
                                         "SYSU-MM01's).")
    top_k: int = option(10, "query: matches per query image.")
    cameras: tuple[int, ...] = option((), "query: search only these cameras.")
    other_modality: bool = option(True, "query: search only the other modality's images (IR -> RGB).")
    time_window: tuple[int, ...] = option((), "query: START,END, unix seconds (inclusive).")
    same_room: tuple[str, ...] = option(tuple(f"{ir}:{rgb}" for ir, rgb in SYSU_SAME_ROOM.items()),
                                        "query: QUERY_CAM:GALLERY_CAM pairs never matched (default SYSU-MM01's); "
                                        "empty for none.")

    def __post_init__(self):
        for flag in ("trial", "batch_size", "top_k"):
            _require(getattr(self, flag) > 0, flag, getattr(self, flag), "a positive integer")
        _require(len(self.time_window) in (0, 2), "time_window", self.time_window, "START,END")


# What a run's checkpoints fix: the networks' shapes and the identities they were trained
# on. A resume may change the schedule, the loss weights or the evaluation, not these.
_RESUME_FIXED_DATA = ("dataset", "trial", "height", "width", "synthetic_ids", "synthetic_test_ids")


def resume_conflicts(saved, wanted):
    """``--flag: the run has X, the flags give Y`` for each field that ``wanted`` (this
    start's Config) changes among those the saved run's checkpoints fix; empty if none."""
    fixed = [("data", field) for field in dataclasses.fields(DataConfig) if field.name in _RESUME_FIXED_DATA]
    fixed += [("model", field) for field in dataclasses.fields(ModelConfig)]
    conflicts = []
    for section, field in fixed:
        before, after = (getattr(getattr(config, section), field.name) for config in (saved, wanted))
        if before != after:
            conflicts.append(f"--{flag_name(field)}: the run has {before!r}, the flags give {after!r}")
    return conflicts


def _tuples(fields):
    """JSON lists back to the tuples the frozen dataclasses hold."""
    return {name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()}
