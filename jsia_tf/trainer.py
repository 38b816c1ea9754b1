"""The JSIA-ReID trainer: modules F, G, V and the discriminators trained jointly (paper Sec. 3, 4.2).

:class:`Trainer` owns the networks, one AdamW optimizer per variable group
(module F's groups and the others each with their own settings) and one
``tf.function`` step per training phase. Each step consumes one
re-ID batch (P x K images per modality, Sec. 4.2) and one generation batch (the
official code's smaller P x K batch for module G), both id-major so that ``rgb[i]``
and ``ir[i]`` show the same person.

Which loss term updates which variable group is :data:`TERM_ROUTES`, with what each
term is beside it.

Table 3's switches decide which terms exist (:attr:`Trainer.terms`): ``--il=false``
drops il (Eq. 11), ``--lr_align=off`` (or ``--num_regions=0``) lr (Eq. 12),
``--ui=false`` ui (Eq. 15); ``--lr_align=unpaired`` computes lr on the real RGB and IR
images of the same person instead of the generated pairs
(``losses.unpaired_local_alignment_loss``); ``--sl=separate`` gives module G its own E^i
and ``--sl=gan`` adds the modality terms (index 7: E^sl aligned by a modality GAN
instead of disentanglement).

E^i = E^sl (the set-level alignment, Sec. 3.3): module G's terms reach the re-ID stem,
which is how E^sl learns modality-invariant maps. A phase steps only its own groups
(``Phase.groups``) and computes only the terms that update one of them: in the
pre-training phase (``pretrain_g``: generation, discriminators, variation) the re-ID
stem is not stepped, as in the official GAN warm-up (with ``--sl=gan`` the modality
discriminator is warmed up there on the not yet trained E^sl). The adversarial terms
(gan, modality_adversarial) read the discriminators (their gradients reach their
weights) but the discriminators' objective never contains them: each group's
gradient is taken only of the terms routed to it.

Data flow of a joint step (caffe-normalised inputs; module G works on [-1, 1] images).
Every network call on an RGB and an IR batch is one call on their concatenation
(:meth:`Trainer.per_modality`, ``--modality_bn``), and images that are not real
training images go through F without moving its batch-norm statistics
(:meth:`Trainer.on_generated`, ``--generated_bn``):

- generation batch: M^i_m = E^i(X_m) (``FeatureAlignment.set_level``), style codes
  E^s_m, reconstructions G_m.decode(M^i_m, s_m), cross-modality pairs
  X_rgb2ir = G_ir.decode(M^i_rgb, s_ir) and X_ir2rgb = G_rgb.decode(M^i_ir, s_rgb) with
  the style of the paired same-identity image ("we only exchange features
  intra-person", Sec. 3.1), cycle images re-encoding the generated images' content
  and style (Eq. 6);
- module V on the stopped maps of both modalities; Eq. 14 mixes the latent and style
  codes of each image and the image K positions further in its batch (another
  identity), alpha ~ U[0, 1] per example from a stateless seed (data seed, step),
  drawn for the global batch;
- re-ID batch: Eq. 13 on the real images of both modalities, and each local
  classifier C^k's identity loss on its stripe (PCB); with ``--sl=gan`` the modality
  terms on their set-level maps M = E^sl(X);
- alignment: Eqs. 11, 12 between the generation batch's real images and their
  generated pairs (the official code aligns on the GAN batch as well).

Mixed precision: under ``mixed_float16`` each group's optimizer is a
``keras.optimizers.LossScaleOptimizer`` (dynamic scale, Keras' defaults). An objective
whose route spans two groups is differentiated once, so it is scaled by the smaller of
their scales and each group's part of the gradient is brought to that group's own scale
(a power-of-two ratio: exact); each group's optimizer then unscales, and on non-finite
gradients skips its update and halves its scale on its own (PyTorch's GradScaler also
skips each optimizer's step on its own, with one scale for all). The reported
gradient norms are unscaled (0 for a skipped group), "loss_scale/<group>" is the scale
the step used, and the losses are never scaled, so a non-finite loss still stops
training (:func:`check_finite`).

Every loss is a per-example value averaged over the GLOBAL batch
(``losses.mean_over_global_batch``); a step returns named scalars (every term, the
Eq. 8 and Eq. 16 totals, per-group gradient norms) reduced over replicas.
"""

import functools
import math

import keras
import numpy as np
import tensorflow as tf

from jsia_tf import config as config_lib
from jsia_tf import losses
from jsia_tf.data import pipeline
from jsia_tf.models import alignment as alignment_lib
from jsia_tf.models import backbone as backbone_lib
from jsia_tf.models.discriminator import ModalityDiscriminator, MultiScaleDiscriminator
from jsia_tf.models.generation import Generator, from_unit_range, to_unit_range
from jsia_tf.models.variation import VariationModule, mix

GROUPS = config_lib.GROUPS
_GENERATION_ROUTE = ("generation", "reid_set_level")
_REID_ROUTE = ("reid_set_level", "reid_instance_level")
# Loss term -> the variable groups its gradient updates.
TERM_ROUTES = {
    "recon": _GENERATION_ROUTE,  # Eq. 4, L1 self-reconstruction
    "cycle": _GENERATION_ROUTE,  # Eqs. 5, 6, L1 cycle reconstruction
    "gan": _GENERATION_ROUTE,  # Eq. 7, LSGAN, generator side
    "discriminator": ("discriminators",),  # Eq. 7, LSGAN on DETACHED fakes
    "variation": ("variation",),  # Eq. 10 on stop_gradient(M^i)
    "id_cls": _REID_ROUTE,  # Eq. 13 on the real re-ID images
    "id_triplet": _REID_ROUTE,  # Eq. 13
    "local_id": _REID_ROUTE,  # C^k's identity loss on the real images' stripes (PCB; Eq. 12's LR)
    "il": _REID_ROUTE,  # Eq. 11 on (real, DETACHED generated)
    "lr": _REID_ROUTE,  # Eq. 12 on (real, DETACHED generated)
    "ui": _REID_ROUTE,  # Eq. 15 on DETACHED mixed images
    # --sl=gan only (Dai et al. 2018): the modality discriminator on STOPPED E^sl maps,
    # and E^sl's maps pushed to D = 1/2.
    "modality_discriminator": ("discriminators",),
    "modality_adversarial": ("reid_set_level",),
}
# Terms of the re-ID batch (the others need module G's outputs on the generation batch).
REID_BATCH_TERMS = ("id_cls", "id_triplet", "local_id", "modality_discriminator", "modality_adversarial")
# The objective each term belongs to: terms of one route and one objective are
# differentiated together, so that the gradient each objective sends into the shared
# stem E^sl is reported ("grad_norm/reid_set_level/<objective>").
TERM_OBJECTIVES = {"recon": "generator", "cycle": "generator", "gan": "generator", "discriminator": "discriminator",
                   "variation": "variation", "id_cls": "reid", "id_triplet": "reid", "local_id": "reid",
                   "il": "alignment", "lr": "alignment", "ui": "alignment",
                   "modality_discriminator": "discriminator", "modality_adversarial": "modality_adversarial"}
# Terms of module G's objective L^G (Eq. 8).
GENERATOR_TERMS = ("recon", "cycle", "gan")
# Adam's epsilon: PyTorch's default, which the official code ran with (Keras: 1e-7).
ADAM_EPSILON = 1e-8
MODALITIES = ("rgb", "ir")


class NonFiniteLossError(FloatingPointError):
    """A training step produced a NaN or infinite loss or gradient norm."""

    def __init__(self, step, names):
        super().__init__(f"step {step}: non-finite {', '.join(names)}; training stopped, the last checkpoint "
                         "written before this step is kept")
        self.step = step
        self.names = tuple(names)


def check_finite(scalars, step):
    """Raises :class:`NonFiniteLossError` naming every non-finite scalar of a step's output."""
    bad = sorted(name for name, value in scalars.items() if not math.isfinite(float(value)))
    if bad:
        raise NonFiniteLossError(step, bad)


def check_variable_groups(groups, variables):
    """Asserts the groups are disjoint and cover ``variables`` exactly.

    Args:
      groups: name -> list of variables.
      variables: every trainable variable of the trainer's networks.
    Raises:
      ValueError: naming the variables in two groups, in none, or in a group but not
        among ``variables``.
    """
    owner = {}
    shared = []
    for name, group in groups.items():
        for variable in group:
            if id(variable) in owner:
                shared.append(f"{variable.path} ({owner[id(variable)]}, {name})")
            owner[id(variable)] = name
    everything = {id(v): v for v in variables}
    missing = [v.path for key, v in everything.items() if key not in owner]
    foreign = [v.path for group in groups.values() for v in group if id(v) not in everything]
    if shared or missing or foreign:
        raise ValueError(f"variable groups must be disjoint and cover every trainable variable: in two groups "
                         f"{shared}; in no group {missing}; not a trainable network variable {foreign}")


def _replica_id():
    context = tf.distribute.get_replica_context()
    return 0 if context is None else context.replica_id_in_sync_group


def _from_all_replicas(value):
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


class Trainer:
    """Networks, optimizers and training steps of JSIA-ReID.

    Attributes:
      alignment: module F (:class:`~jsia_tf.models.alignment.FeatureAlignment`), the
        embedder; its ``set_level_encoder`` is E^sl = E^i.
      content_encoder: E^i, module G's modality-invariant encoder: F's E^sl when
        ``model.set_level == "shared"`` (the paper), its own copy of the stem otherwise.
      generator_rgb, generator_ir: module G's generators (style encoder, MLP, decoder).
      discriminator_rgb, discriminator_ir: multi-scale LSGAN discriminators.
      modality_discriminator: with ``model.set_level == "gan"``, the modality
        discriminator on E^sl's maps (Table 3, index 7); None otherwise.
      variation: module V.
      groups: group name -> trainable variables (:data:`GROUPS`).
      optimizers: group name -> its optimizer (``TrainConfig.optimizer``), wrapped in a
        ``keras.optimizers.LossScaleOptimizer`` under ``mixed_float16``.
      step: int64 variable, the number of steps taken (checkpointed).

    Args:
      config: the run's :class:`jsia_tf.config.Config`.
      num_classes: training identities (from the dataset).
      strategy: a tf.distribute strategy (default: the current one). Networks,
        variables and optimizers are created in its scope; with more than one replica
        the batch norms are synchronised.
    """

    def __init__(self, config, num_classes, strategy=None):
        self.config = config
        self.num_classes = num_classes
        self.strategy = strategy or tf.distribute.get_strategy()
        model = config.model
        self.reid_batch_size = config.data.num_ids * config.data.num_instances  # per modality, global
        self.gan_batch_size = config.data.gan_num_ids * config.data.gan_num_instances
        synchronized = self.strategy.num_replicas_in_sync > 1
        with self.strategy.scope():
            backbone = self._build_backbone(synchronized)
            self.alignment = alignment_lib.FeatureAlignment(
                backbone.set_level_encoder, backbone.instance_level_encoder, num_classes,
                num_regions=model.num_regions, gray_input=model.gray_input, test_features=model.test_features,
                synchronized_bn=synchronized, name="alignment")
            if model.set_level == "shared":
                self.content_encoder = self.alignment.set_level_encoder
            else:  # Table 3 without SL ("separate") or with the degraded SL ("gan"): E^i is not E^sl.
                self.content_encoder = self._build_backbone(synchronized).set_level_encoder
            self.generator_rgb, self.generator_ir = (self._build_generator(backbone.out_channels, name)
                                                     for name in ("generator_rgb", "generator_ir"))
            self.discriminator_rgb, self.discriminator_ir = (
                MultiScaleDiscriminator(num_scales=model.disc_num_scales, num_layers=model.disc_num_layers,
                                        base_width=model.disc_base_width, name=name)
                for name in ("discriminator_rgb", "discriminator_ir"))
            self.modality_discriminator = (ModalityDiscriminator(name="modality_discriminator")
                                           if model.set_level == "gan" else None)
            self.variation = VariationModule(
                feature_channels=backbone.out_channels, hidden_channels=model.variation_hidden_channels,
                latent_channels=model.variation_latent_channels, num_downsample=model.variation_num_downsample,
                seed=config.data.seed, name="variation")
            self._build_variables()
            self.groups = self._variable_groups()
            self.optimizers = {}
            for name in GROUPS:
                optimizer = self._build_optimizer(name)
                if self.loss_scaling:
                    optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name=f"loss_scale_{name}")
                optimizer.build(self.groups[name])
                self.optimizers[name] = optimizer
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            # Saved with the checkpoint, so a run's optimizer settings travel with its weights.
            self.optimizer_settings = {
                name: tf.Variable(self.config.train.optimizer_settings(name), dtype=tf.float64, trainable=False,
                                  name=f"optimizer_settings_{name}") for name in GROUPS}
        self._step_functions = {}
        self._embed = tf.function(self.alignment.embed, reduce_retracing=True)

    # -- construction -------------------------------------------------------------------

    @property
    def loss_scaling(self):
        """Whether the losses are scaled dynamically (``--mixed_precision=mixed_float16``)."""
        return self.config.train.mixed_precision == "mixed_float16"

    def _build_backbone(self, synchronized):
        model = self.config.model
        widths = model.backbone_widths if model.backbone == "resnet18" else backbone_lib.DEFAULT_WIDTHS
        return backbone_lib.build_backbone(model.backbone, model.backbone_weights, widths=tuple(widths),
                                           synchronized_bn=synchronized)

    def _build_generator(self, content_channels, name):
        model = self.config.model
        # E^sl downsamples by 4: two x2 upsamplings give back the input size (Sec. 4.2).
        return Generator(content_channels=content_channels, style_dim=model.style_dim,
                         style_base_width=model.style_base_width, style_num_downsample=model.style_num_downsample,
                         style_max_width=model.style_max_width, mlp_hidden_dim=model.mlp_hidden_dim,
                         num_res_blocks=model.num_res_blocks, num_upsample=2, name=name)

    def _build_optimizer(self, group):
        """AdamW with ``group``'s settings (``TrainConfig.optimizer_settings``), or plain SGD.

        Module F's groups and the others (G, V, D) have their own learning rate, betas
        and weight decay, as in the official code (re-ID 4.5e-4, (0.9, 0.999), 5e-4; GAN
        1e-4, (0.5, 0.999), 1e-4). The decay is decoupled (AdamW); the official code's
        is PyTorch Adam's L2 term (docs/FIDELITY.md). SGD (``--optimizer=sgd``) is for
        the distributed scaling tests, which Adam's normalisation would hide.
        """
        lr, beta1, beta2, weight_decay = self.config.train.optimizer_settings(group)
        if self.config.train.optimizer == "sgd":
            return keras.optimizers.SGD(learning_rate=lr, name=f"sgd_{group}")
        return keras.optimizers.AdamW(learning_rate=lr, beta_1=beta1, beta_2=beta2, weight_decay=weight_decay,
                                      epsilon=ADAM_EPSILON, name=f"adamw_{group}")

    @property
    def models(self):
        """Name -> every network the trainer owns (the checkpoint's names)."""
        models = {"alignment": self.alignment, "generator_rgb": self.generator_rgb,
                  "generator_ir": self.generator_ir, "discriminator_rgb": self.discriminator_rgb,
                  "discriminator_ir": self.discriminator_ir, "variation": self.variation}
        if self.content_encoder is not self.alignment.set_level_encoder:
            models["content_encoder"] = self.content_encoder
        if self.modality_discriminator is not None:
            models["modality_discriminator"] = self.modality_discriminator
        return models

    def _build_variables(self):
        """Creates every variable with one inference-mode call on a dummy batch."""
        data = self.config.data
        images = tf.zeros([2, data.height, data.width, 3])
        self.alignment(images, training=False)
        maps = self.content(images, training=False)
        for generator in (self.generator_rgb, self.generator_ir):
            generator(maps, to_unit_range(images))
        for discriminator in (self.discriminator_rgb, self.discriminator_ir):
            discriminator(to_unit_range(images))
        if self.modality_discriminator is not None:
            self.modality_discriminator(self.alignment.set_level(images, training=False))
        self.variation(maps, training=False)

    def _variable_groups(self):
        alignment = self.alignment
        generation = self.generator_rgb.trainable_variables + self.generator_ir.trainable_variables
        if "content_encoder" in self.models:
            generation += self.content_encoder.trainable_variables
        instance_level = alignment.instance_level_encoder.trainable_variables + alignment.classifier.trainable_variables
        for classifier in alignment.local_classifiers:
            instance_level += classifier.trainable_variables
        discriminators = self.discriminator_rgb.trainable_variables + self.discriminator_ir.trainable_variables
        if self.modality_discriminator is not None:
            discriminators += self.modality_discriminator.trainable_variables
        groups = {
            "generation": generation,
            "discriminators": discriminators,
            "reid_set_level": alignment.set_level_encoder.trainable_variables,
            "reid_instance_level": instance_level,
            "variation": self.variation.trainable_variables,
        }
        everything = [v for model in self.models.values() for v in model.trainable_variables]
        check_variable_groups(groups, list({id(v): v for v in everything}.values()))
        return groups

    def checkpoint(self):
        """A ``tf.train.Checkpoint`` of every network, optimizer, the step and V's noise state, by name."""
        optimizers = {f"optimizer_{name}": optimizer for name, optimizer in self.optimizers.items()}
        settings = {f"optimizer_settings_{name}": value for name, value in self.optimizer_settings.items()}
        return tf.train.Checkpoint(step=self.step, variation_seed=self.variation.seed_generator.state,
                                   **self.models, **optimizers, **settings)

    def restored_settings_differ(self):
        """{group: (checkpoint's, config's) (lr, beta1, beta2, weight_decay)} where they differ.

        After a restore the variables hold the checkpoint's settings; the optimizers run
        with the config's (the flags of this start). The variables are then set to the
        config's, so the next checkpoint records what this start trains with.
        """
        out = {}
        for name, variable in self.optimizer_settings.items():
            saved, wanted = tuple(variable.numpy().tolist()), self.config.train.optimizer_settings(name)
            if not np.allclose(saved, wanted):
                out[name] = (saved, wanted)
                variable.assign(wanted)
        return out

    # -- the losses -----------------------------------------------------------------------

    @property
    def term_weights(self):
        """Term -> weight in Eqs. 8 and 16."""
        loss = self.config.loss
        return {"recon": loss.lambda_recon, "cycle": loss.lambda_cyc, "gan": loss.lambda_gan, "discriminator": 1.0,
                "variation": 1.0, "id_cls": 1.0, "id_triplet": 1.0, "local_id": loss.lambda_local_id,
                "il": loss.lambda_il, "lr": loss.lambda_lr, "ui": loss.lambda_ui, "modality_discriminator": 1.0,
                "modality_adversarial": loss.lambda_modality}

    @property
    def terms(self):
        """The terms this configuration has (Table 3's switches), in :data:`TERM_ROUTES` order."""
        loss = self.config.loss
        absent = set()
        if not loss.instance_alignment:
            absent.add("il")
        if loss.local_alignment == "off" or not self.alignment.num_regions:
            absent.update({"lr", "local_id"})  # no local regions: no C^k
        if not loss.unseen_identity:
            absent.add("ui")
        if self.modality_discriminator is None:
            absent.update({"modality_discriminator", "modality_adversarial"})
        if not self.config.model.generation:  # module F alone: module G's terms reach E^sl, leave them out
            absent.update(("recon", "cycle", "gan", "discriminator", "variation"))
        return tuple(term for term in TERM_ROUTES if term not in absent)

    def terms_for(self, groups):
        """The terms a phase stepping ``groups`` computes: those it has updating one of them, weight > 0."""
        weights = self.term_weights
        return tuple(term for term in self.terms if set(TERM_ROUTES[term]) & set(groups) and weights[term] > 0)

    def per_modality(self, fn, rgb, ir):
        """``fn`` on an RGB and an IR batch: {"rgb": fn(rgb), "ir": fn(ir)}.

        With ``modality_bn="joint"`` (default) ``fn`` runs once on the concatenated batch
        and its outputs are split, so every batch norm normalises both modalities with
        one set of statistics, as the moving statistics will at test time; normalised
        per modality ("separate", the official code) the network never sees the modality
        gap in training, and the mixed moving statistics bring it back at test. AGW's
        cross-modal baseline concatenates for this reason.
        """
        if self.config.model.modality_bn == "separate":
            return {"rgb": fn(rgb), "ir": fn(ir)}
        size = tf.shape(rgb)[0]
        both = fn(tf.concat([rgb, ir], axis=0))
        return {"rgb": tf.nest.map_structure(lambda t: t[:size], both),
                "ir": tf.nest.map_structure(lambda t: t[size:], both)}

    def _bn_statistics(self):
        """The batch-norm moving statistics of the networks that see generated images."""
        networks = [self.alignment]
        if self.content_encoder is not self.alignment.set_level_encoder:
            networks.append(self.content_encoder)
        return [v for network in networks for v in network.non_trainable_variables
                if v.path.split("/")[-1].startswith("moving_")]

    def on_generated(self, fn, training):
        """``fn(training)`` for images that are not real training images (``generated_bn``).

        Generated pairs, cycle inputs and mixed images come from a G that is still
        learning; if they updated the moving statistics, about half of what Eq. 17 is
        normalised with at test would describe them. "restore" (default) normalises them
        with their batch statistics as in training, then puts the moving statistics back;
        "inference" normalises them with the moving statistics; "update" is the official
        code (they update the statistics like real images).
        """
        mode = self.config.model.generated_bn
        if not training or mode == "update":
            return fn(training)
        if mode == "inference":
            return fn(False)
        statistics = self._bn_statistics()
        saved = [tf.identity(v.value) for v in statistics]
        out = fn(True)
        # Ordered after fn's updates: tf.function keeps program order per variable.
        with tf.control_dependencies(tf.nest.flatten(out)):
            for variable, value in zip(statistics, saved):
                variable.assign(value)
        return out

    def content(self, images, training=None):
        """M^i = E^i(X) (Eq. 2): caffe-normalised [B, H, W, 3] -> [B, H/4, W/4, C]."""
        if self.content_encoder is self.alignment.set_level_encoder:
            return self.alignment.set_level(images, training=training)
        if self.alignment.gray_input:
            images = alignment_lib.to_gray(images)
        return self.content_encoder(images, training=training)

    @property
    def generators(self):
        """{modality: its generator}."""
        return {"rgb": self.generator_rgb, "ir": self.generator_ir}

    def generate(self, rgb, ir, training=True):
        """Module G on an id-aligned pair of batches (Eqs. 1-6).

        Args:
          rgb, ir: caffe-normalised [B, H, W, 3]; rgb[i] and ir[i] show the same person.
        Returns:
          a dict of per-modality dicts ("rgb"/"ir" keys) of unit-range images or codes:
          "real" [B, H, W, 3], "content" M^i [B, H/4, W/4, C], "style" [B, style_dim],
          "recon" (Eq. 4's decodings), "cross" ({"rgb": X_ir2rgb, "ir": X_rgb2ir}: the
          generated image OF that modality), "cycle" (Eq. 6).
        """
        g = self.generators
        out = {"real": {"rgb": to_unit_range(rgb), "ir": to_unit_range(ir)},
               "content": self.per_modality(lambda x: self.content(x, training), rgb, ir)}
        out["style"] = {m: g[m].encode_style(out["real"][m]) for m in MODALITIES}
        out["recon"] = {m: g[m].decode(out["content"][m], out["style"][m]) for m in MODALITIES}
        # X_rgb2ir = D_ir(M^i_rgb, s_ir), X_ir2rgb = D_rgb(M^i_ir, s_rgb): styles of the paired person.
        out["cross"] = {"ir": g["ir"].decode(out["content"]["rgb"], out["style"]["ir"]),
                        "rgb": g["rgb"].decode(out["content"]["ir"], out["style"]["rgb"])}
        # Eq. 6: X_rgb2ir2rgb = D_rgb(E^i(X_rgb2ir), E^s_rgb(X_ir2rgb)), and symmetrically.
        cycle_content = self.on_generated(lambda t: self.per_modality(
            lambda x: self.content(x, t), from_unit_range(out["cross"]["rgb"]), from_unit_range(out["cross"]["ir"])),
            training)  # {"rgb": E^i(X_ir2rgb), "ir": E^i(X_rgb2ir)}
        out["cycle"] = {
            "rgb": g["rgb"].decode(cycle_content["ir"], g["rgb"].encode_style(out["cross"]["rgb"])),
            "ir": g["ir"].decode(cycle_content["rgb"], g["ir"].encode_style(out["cross"]["ir"])),
        }
        return out

    def mixing_ratios(self, batch_size):
        """alpha ~ U[0, 1] per example (Eq. 14), stateless from (data seed, step): drawn for
        the global batch, this replica's slice, so alpha is what one device would draw."""
        seed = tf.stack([tf.constant(self.config.data.seed, tf.int64), tf.convert_to_tensor(self.step)])
        replicas = self.strategy.num_replicas_in_sync
        return tf.random.stateless_uniform([replicas, batch_size], seed)[_replica_id()]

    def decode_mixture(self, modality, codes_1, codes_2, alpha):
        """Eq. 14, then D^v (Eq. 9) and the modality's decoder (Eq. 3): unit-range [B, H, W, 3].

        ``codes_1``, ``codes_2``: (z [B, h', w', Z], style [B, style_dim]) pairs; alpha [B],
        the weight of codes_1. Training (UI), the summaries and ``analyze`` all mix here.
        """
        (z_1, s_1), (z_2, s_2) = codes_1, codes_2
        return self.generators[modality].decode(self.variation.decode(mix(z_1, z_2, alpha)), mix(s_1, s_2, alpha))

    def mix_images(self, generated, z, alpha, modality):
        """Eq. 14 then Eq. 9 and Eq. 3: images mixing each example with the one K further.

        Args:
          generated: :meth:`generate`'s output; z: {modality: latent codes [B, h', w', Z]}.
          alpha: [B] ratios; modality: "rgb" or "ir".
        Returns:
          unit-range images [B, H, W, 3] of unseen identities.
        """
        shift = self.config.data.gan_num_instances  # the next identity in an id-major batch
        z1, s1 = z[modality], generated["style"][modality]
        return self.decode_mixture(modality, (z1, s1), (tf.roll(z1, shift, axis=0), tf.roll(s1, shift, axis=0)),
                                   alpha)  # [B, H, W, 3]

    def compute_losses(self, reid_batch, gan_batch, terms=None, training=True):
        """Every requested loss term, each averaged over the global batch (one replica's share).

        Args:
          reid_batch, gan_batch: pipeline batches (dicts "rgb", "ir", "rgb_labels",
            "ir_labels"), this replica's slice.
          terms: names from :attr:`terms` to compute (default: all of them).
        Returns:
          {term: float32 scalar}; summed over replicas it is the global-batch mean.
        """
        terms = set(self.terms if terms is None else terms)
        unknown = terms - set(self.terms)
        if unknown:
            raise ValueError(f"loss terms {sorted(unknown)} are not computed in this configuration; expected "
                             f"names from {list(self.terms)}")
        cfg = self.config.loss
        out = {}
        gan_size, reid_size = self.gan_batch_size, self.reid_batch_size
        align_terms = terms & {"il", "lr", "ui"}
        if terms - set(REID_BATCH_TERMS):
            gen = self.generate(gan_batch["rgb"], gan_batch["ir"], training=training)
            real, fake = gen["real"], gen["cross"]
            discriminators = {"rgb": self.discriminator_rgb, "ir": self.discriminator_ir}
            if "recon" in terms:
                out["recon"] = losses.mean_over_global_batch(
                    sum(losses.l1_per_example(gen["recon"][m], real[m]) for m in MODALITIES), gan_size)
            if "cycle" in terms:
                out["cycle"] = losses.mean_over_global_batch(
                    sum(losses.l1_per_example(gen["cycle"][m], real[m]) for m in MODALITIES), gan_size)
            if "gan" in terms:
                out["gan"] = losses.mean_over_global_batch(
                    sum(losses.lsgan_generator_loss(discriminators[m](fake[m])) for m in MODALITIES), gan_size)
            if "discriminator" in terms:
                out["discriminator"] = losses.mean_over_global_batch(
                    sum(losses.lsgan_discriminator_loss(discriminators[m](real[m]),
                                                        discriminators[m](tf.stop_gradient(fake[m])))
                        for m in MODALITIES), gan_size)
            z = {}
            if terms & {"variation", "ui"}:
                maps = tf.stop_gradient(tf.concat([gen["content"]["rgb"], gen["content"]["ir"]], 0))  # [2B, h, w, C]
                z_both, mu, tau = self.variation(maps, training=training)
                z["rgb"], z["ir"] = tf.split(z_both, 2, axis=0)
                if "variation" in terms:
                    per_map = losses.variation_loss(maps, self.variation.decode(z_both), mu, tau,
                                                    cfg.variation_distribution)  # [2B]
                    out["variation"] = losses.mean_over_global_batch(per_map, 2 * gan_size)
            if align_terms:
                self._alignment_losses(gen, z, gan_batch, align_terms, training, out)
        if terms & set(REID_BATCH_TERMS):
            instance = bool(terms & {"id_cls", "id_triplet", "local_id"})

            def reid_forward(images):
                maps = self.alignment.set_level(images, training=training)  # M = E^sl(X) [B, H/4, W/4, C]
                return {"maps": maps, **(self.alignment.instance_level(maps, training=training) if instance else {})}

            reid = self.per_modality(reid_forward, reid_batch["rgb"], reid_batch["ir"])
            if terms & {"modality_discriminator", "modality_adversarial"}:
                self._modality_losses({m: reid[m]["maps"] for m in MODALITIES}, terms, out)
            labels = {m: reid_batch[f"{m}_labels"] for m in MODALITIES}
            if "id_cls" in terms:
                per_image = tf.concat([losses.label_smoothed_cross_entropy(labels[m], reid[m]["logits"],
                                                                           cfg.label_smoothing) for m in MODALITIES],
                                      axis=0)  # [2B]: the official mean of the RGB and IR means
                out["id_cls"] = losses.mean_over_global_batch(per_image, 2 * reid_size)
            if "local_id" in terms:
                # PCB (Sun et al. 2018), which Sec. 3.3's LR follows: each C^k is an identity
                # classifier of its stripe; Eq. 12's KL then aligns trained classifiers.
                per_image = tf.concat([
                    tf.add_n([losses.label_smoothed_cross_entropy(labels[m], logits, cfg.label_smoothing)
                              for logits in reid[m]["local_logits"]]) / len(reid[m]["local_logits"])
                    for m in MODALITIES], axis=0)  # [2B], the mean over the n regions
                out["local_id"] = losses.mean_over_global_batch(per_image, 2 * reid_size)
            if "id_triplet" in terms:
                # This replica's anchors mine in the GLOBAL batch of the other modality, as on one device.
                per_anchor = losses.cross_modal_triplet_loss(reid["rgb"]["features"], reid["ir"]["features"],
                                                             labels["rgb"], labels["ir"], cfg.triplet_margin,
                                                             gallery=_from_all_replicas)  # [2B]
                out["id_triplet"] = losses.mean_over_global_batch(per_anchor, 2 * reid_size)
        return out

    def _modality_losses(self, maps, terms, out):
        """Table 3, index 7: the modality GAN on E^sl's maps of the re-ID batch (Dai et al. 2018).

        The discriminator term sees stopped maps (it trains the discriminator only); the
        adversarial term pushes every score to 1/2 (``losses.lsgan_modality_confusion_loss``).
        """
        discriminator = self.modality_discriminator
        size = 2 * self.reid_batch_size  # both modalities
        if "modality_discriminator" in terms:
            out["modality_discriminator"] = losses.mean_over_global_batch(losses.lsgan_modality_discriminator_loss(
                discriminator(tf.stop_gradient(maps["rgb"])), discriminator(tf.stop_gradient(maps["ir"]))), size)
        if "modality_adversarial" in terms:
            scores = tf.concat([discriminator(maps["rgb"]), discriminator(maps["ir"])], 0)  # [2B]
            out["modality_adversarial"] = losses.mean_over_global_batch(
                losses.lsgan_modality_confusion_loss(scores), size)

    def _alignment_losses(self, gen, z, gan_batch, terms, training, out):
        """Eqs. 11, 12 and 15 on the generation batch.

        Eq. 11 and Eq. 12 ("paired") compare each real image with its detached generated
        pair; ``--lr_align=unpaired`` compares, in Eq. 12, each real image with the real
        image of the other modality at the same batch position (the same person: the
        batch is id-aligned), see ``losses.unpaired_local_alignment_loss``. Eq. 15 on
        detached mixed images. Generated and mixed images go through F under
        :meth:`on_generated`.
        """
        cfg = self.config.loss
        gan_size = self.gan_batch_size
        alignment = self.alignment
        unpaired = cfg.local_alignment == "unpaired"
        paired = terms & ({"il"} if unpaired else {"il", "lr"})  # terms on (real, generated) pairs
        if self.content_encoder is alignment.set_level_encoder:  # M = E^sl(X) is already there
            real = self.per_modality(lambda maps: alignment.instance_level(maps, training=training),
                                     gen["content"]["rgb"], gen["content"]["ir"])
        else:
            real = self.per_modality(lambda x: alignment(x, training=training), gan_batch["rgb"], gan_batch["ir"])
        if "lr" in terms and unpaired:
            out["lr"] = losses.mean_over_global_batch(losses.unpaired_local_alignment_loss(
                real["ir"]["local_logits"], real["rgb"]["local_logits"], cfg.il_convention), gan_size)
        if paired:
            # The generated images are inputs here: the alignment trains F only.
            fake = self.on_generated(lambda t: self.per_modality(
                lambda x: alignment(x, training=t), from_unit_range(tf.stop_gradient(gen["cross"]["rgb"])),
                from_unit_range(tf.stop_gradient(gen["cross"]["ir"]))), training)
            if "il" in paired:
                out["il"] = losses.mean_over_global_batch(losses.instance_alignment_loss(
                    real["ir"]["logits"], fake["rgb"]["logits"], real["rgb"]["logits"], fake["ir"]["logits"],
                    cfg.il_convention), gan_size)
            if "lr" in paired:
                out["lr"] = losses.mean_over_global_batch(losses.local_alignment_loss(
                    real["ir"]["local_logits"], fake["rgb"]["local_logits"], real["rgb"]["local_logits"],
                    fake["ir"]["local_logits"], cfg.il_convention), gan_size)
        if "ui" in terms:
            shift = self.config.data.gan_num_instances
            alpha = self.mixing_ratios(tf.shape(gan_batch["rgb"])[0])  # [B]
            mixed = {m: tf.stop_gradient(from_unit_range(self.mix_images(gen, z, alpha, m))) for m in MODALITIES}
            mix_out = self.on_generated(lambda t: self.per_modality(
                lambda x: alignment(x, training=t)["logits"], mixed["rgb"], mixed["ir"]), training)
            per_image = []
            for m in MODALITIES:
                logits = real[m]["logits"]
                per_image.append(losses.unseen_identity_loss(mix_out[m], logits, tf.roll(logits, shift, axis=0),
                                                             alpha, cfg.ui_direction))
            out["ui"] = losses.mean_over_global_batch(tf.concat(per_image, 0), 2 * gan_size)  # [2B]

    # -- gradients and steps --------------------------------------------------------------

    def loss_scales(self, groups):
        """{group: its optimizer's current dynamic loss scale} under ``mixed_float16``, else None."""
        if not self.loss_scaling:
            return None
        # Values, not the variables: the optimizers update the scales within the step.
        return {name: tf.identity(self.optimizers[name].dynamic_scale.value) for name in groups}

    @staticmethod
    def _route_scale(scales, stepped):
        """The loss scale of an objective whose route steps ``stepped``: the smallest of theirs."""
        return tf.reduce_min(tf.stack([scales[name] for name in stepped]))

    def objectives(self, values, groups, scales=None):
        """The objectives to differentiate: {(stepped groups, objective): weighted sum of terms}.

        Terms with the same route (:data:`TERM_ROUTES`) restricted to the stepped
        ``groups`` and the same :data:`TERM_OBJECTIVES` name share one objective,
        differentiated once. With ``scales`` (:meth:`loss_scales`) each objective is
        multiplied by the smallest scale of its route. Call inside the tape.
        """
        weights = self.term_weights
        routes = {}
        for term in values:
            stepped = tuple(g for g in TERM_ROUTES[term] if g in groups)
            if stepped:
                routes.setdefault((stepped, TERM_OBJECTIVES[term]), []).append(term)
        objectives = {key: losses.weighted_sum({t: values[t] for t in terms}, {t: weights[t] for t in terms})
                      for key, terms in routes.items()}
        if scales is None:
            return objectives
        return {key: objective * self._route_scale(scales, key[0]) for key, objective in objectives.items()}

    def gradients(self, tape, objectives, groups, scales=None, stem_norms=None):
        """Per stepped group, the gradient of the terms routed to it (:meth:`objectives`).

        A group's gradient is the sum over the objectives whose route holds it;
        variables no computed term reaches get zeros. With ``scales`` (the objectives
        scaled by :meth:`objectives`), each group's part is brought from its route's
        scale to the group's own scale, so a group's gradient is scaled by its scale.
        ``stem_norms``, a dict, receives {objective: the unscaled global norm of its
        gradient on reid_set_level (E^sl)} for the objectives that reach it.
        """
        grads = {name: [None] * len(self.groups[name]) for name in groups}
        for (stepped, objective_name), objective in objectives.items():
            variables = [v for name in stepped for v in self.groups[name]]
            flat = tape.gradient(objective, variables)
            start = 0
            for name in stepped:
                part = flat[start:start + len(self.groups[name])]
                start += len(self.groups[name])
                if stem_norms is not None and name == "reid_set_level":
                    norm = tf.linalg.global_norm([g for g in part if g is not None] or [tf.zeros([])])
                    stem_norms[objective_name] = norm if scales is None else norm / self._route_scale(scales, stepped)
                if scales is not None:
                    ratio = scales[name] / self._route_scale(scales, stepped)  # a power of 2, >= 1
                    part = [None if g is None else g * ratio for g in part]
                grads[name] = [b if a is None else (a if b is None else a + b) for a, b in zip(grads[name], part)]
        return {name: [tf.zeros_like(v) if g is None else g for g, v in zip(grads[name], self.groups[name])]
                for name in groups}

    def _replica_step(self, groups, terms, reid_batch, gan_batch):
        scales = self.loss_scales(groups)  # read before the optimizers update them
        with tf.GradientTape(persistent=True) as tape:
            values = self.compute_losses(reid_batch, gan_batch, terms)
            objectives = self.objectives(values, groups, scales)
        stem_norms = {}
        grads = self.gradients(tape, objectives, groups, scales, stem_norms)
        del tape
        for name in groups:
            # A LossScaleOptimizer unscales, and skips the update on non-finite gradients.
            self.optimizers[name].apply_gradients(zip(grads[name], self.groups[name]))
        weights = self.term_weights
        scalars = {f"loss/{term}": value for term, value in values.items()}
        generator_terms = {t: values[t] for t in GENERATOR_TERMS if t in values}
        if generator_terms:
            scalars["loss/generator_total"] = losses.weighted_sum(generator_terms,
                                                                  {t: weights[t] for t in generator_terms})
        scalars["loss/total"] = losses.weighted_sum(values, {t: weights[t] for t in values})
        norms = {f"grad_norm/reid_set_level/{name}": norm if scales is None else
                 tf.where(tf.math.is_finite(norm), norm, 0.0) for name, norm in stem_norms.items()}
        for name in groups:
            if scales is None:
                norms[f"grad_norm/{name}"] = tf.linalg.global_norm(grads[name])
                continue
            norm = tf.linalg.global_norm([g / scales[name] for g in grads[name]])
            norms[f"grad_norm/{name}"] = tf.where(tf.math.is_finite(norm), norm, 0.0)  # 0: the update was skipped
            norms[f"loss_scale/{name}"] = scales[name]
        return scalars, norms

    def _make_step(self, groups):
        terms = self.terms_for(groups)

        replica_step = functools.partial(self._replica_step, groups, terms)
        if self.config.train.jit_compile:  # XLA per replica, as Keras' own fit does under a strategy
            replica_step = tf.function(replica_step, jit_compile=True)

        @tf.function
        def step(reid_batch, gan_batch):
            scalars, norms = self.strategy.run(replica_step, args=(reid_batch, gan_batch))
            out = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in scalars.items()}
            # Per-replica gradient norms, averaged (the global norm with one replica).
            out.update({k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                        for k, v in norms.items()})
            self.step.assign_add(1)
            return out

        return step

    def train_step(self, phase, reid_batch, gan_batch):
        """One optimisation step of ``phase`` (a :class:`jsia_tf.config.Phase`) on distributed batches.

        Returns {name: float32 scalar tensor}: "loss/<term>", "loss/generator_total",
        "loss/total", "grad_norm/<group>" and, under ``mixed_float16``, "loss_scale/<group>"
        (the scale this step used; the gradient norms are unscaled, 0 when the group's
        update was skipped for non-finite scaled gradients).
        """
        groups = tuple(g for g in GROUPS if g in phase.groups)
        if groups not in self._step_functions:
            self._step_functions[groups] = self._make_step(groups)
        return self._step_functions[groups](reid_batch, gan_batch)

    def set_learning_rates(self, rates):
        """Assigns {group: learning rate} (``TrainConfig.learning_rates_at``) to the optimizers."""
        for name, value in rates.items():
            self.optimizers[name].learning_rate = value

    # -- images for summaries -------------------------------------------------------------

    def sample_images(self, gan_batch, max_images=4, alphas=(1.0, 0.75, 0.5, 0.25, 0.0)):
        """uint8 RGB images for TensorBoard, networks in inference mode.

        Returns:
          "rgb", "ir": Fig. 6 grids [n, H, 4W, 3], per row real | its generated pair in
            the other modality | reconstruction | cycle reconstruction;
          "mixing_rgb", "mixing_ir": Fig. 7 strips [1, H, (2 + len(alphas)) W, 3]: x_1,
            the Eq. 14 mixtures for ``alphas`` (weight of x_1), x_2 (the next identity).
        """
        rgb, ir = gan_batch["rgb"], gan_batch["ir"]
        gen = self.generate(rgb, ir, training=False)

        def pixels(unit):
            return pipeline.denormalize(from_unit_range(unit))

        n = min(max_images, int(rgb.shape[0]))
        out = {}
        for m, other in (("rgb", "ir"), ("ir", "rgb")):
            row = [gen["real"][m], gen["cross"][other], gen["recon"][m], gen["cycle"][m]]
            out[m] = pixels(tf.concat([x[:n] for x in row], axis=2))  # [n, H, 4W, 3]
        second = self.config.data.gan_num_instances % int(rgb.shape[0])  # first image of the next identity
        for m in MODALITIES:
            z, _, _ = self.variation(gen["content"][m], training=False)
            pick = tf.constant([0] * len(alphas))
            mixed = self.decode_mixture(m, (tf.gather(z, pick), tf.gather(gen["style"][m], pick)),
                                        (tf.gather(z, pick + second), tf.gather(gen["style"][m], pick + second)),
                                        tf.constant(alphas, tf.float32))
            strip = [gen["real"][m][:1], *tf.split(mixed, len(alphas)), gen["real"][m][second:second + 1]]
            out[f"mixing_{m}"] = pixels(tf.concat(strip, axis=2))  # [1, H, (2 + len(alphas)) W, 3]
        return out

    # -- inference --------------------------------------------------------------------------

    def embed(self, images):
        """Eq. 17: L2-normalised test features [B, D] (numpy) of caffe-normalised images."""
        return self._embed(tf.convert_to_tensor(images)).numpy()

    def embed_images(self, batches):
        """Features [N, D] of every batch of ``batches`` (e.g. ``pipeline.eval_dataset``)."""
        return np.concatenate([self.embed(batch) for batch in batches])
