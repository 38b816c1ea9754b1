"""JSIA-ReID as one model: modules F, G, V and the discriminators (paper Sec. 3), G's
forward pass, and the loss terms of Eqs. 4-16 (:meth:`JSIA.losses`).

E^i = E^sl (the set-level alignment, Sec. 3.3): module G encodes the modality-invariant
maps M^i with module F's stem, which is how E^sl learns modality-invariant maps; the
Table 3 ablations without it give G its own copy (``--sl=separate`` / ``gan``).

Every network call on an RGB and an IR batch is one call on their concatenation
(:meth:`JSIA.per_modality`, ``--modality_bn``), and images that are not real training
images go through F without moving its batch-norm statistics
(:meth:`JSIA.on_generated`, ``--generated_bn``). Module G works on [-1, 1] images, F on
caffe-normalised ones.
"""

import dataclasses
import typing

import tensorflow as tf

from jsia_tf import losses
from jsia_tf import routing
from jsia_tf.config import MODALITIES
from jsia_tf.models import alignment as alignment_lib
from jsia_tf.models import backbone as backbone_lib
from jsia_tf.models.discriminator import ModalityDiscriminator, MultiScaleDiscriminator
from jsia_tf.models.generation import Generator, from_unit_range, to_unit_range
from jsia_tf.models.variation import VariationModule, mix


def build_jsia(config, num_classes, synchronized=False):
    """The :class:`JSIA` of a run's :class:`jsia_tf.config.Config`: its networks and arguments.

    Args:
      num_classes: training identities.
      synchronized: synchronise the batch norms across replicas (build in the
        strategy's scope).
    """
    model, data, loss = config.model, config.data, config.loss

    def backbone():
        widths = model.backbone_widths if model.backbone == "resnet18" else backbone_lib.DEFAULT_WIDTHS
        return backbone_lib.build_backbone(model.backbone, model.backbone_weights, widths=tuple(widths),
                                           synchronized_bn=synchronized)

    stem = backbone()
    alignment = alignment_lib.FeatureAlignment(
        stem.set_level_encoder, stem.instance_level_encoder, num_classes, num_regions=model.num_regions,
        gray_input=model.gray_input, test_features=model.test_features, synchronized_bn=synchronized,
        name="alignment")
    # Table 3 without SL ("separate") or with the degraded SL ("gan"): E^i is not E^sl.
    content_encoder = alignment.set_level_encoder if model.sl == "shared" else backbone().set_level_encoder
    generators = {m: Generator(
        content_channels=stem.out_channels, style_dim=model.style_dim, style_base_width=model.style_base_width,
        style_num_downsample=model.style_num_downsample, style_max_width=model.style_max_width,
        mlp_hidden_dim=model.mlp_hidden_dim, num_res_blocks=model.num_res_blocks,
        num_upsample=2 - (model.generation_scale - 1), decoder_width=model.decoder_width or None,
        name=f"generator_{m}") for m in MODALITIES}
    discriminators = {m: MultiScaleDiscriminator(
        num_scales=model.disc_num_scales, num_layers=model.disc_num_layers, base_width=model.disc_base_width,
        name=f"discriminator_{m}") for m in MODALITIES}
    modality_discriminator = ModalityDiscriminator(name="modality_discriminator") if model.sl == "gan" else None
    variation = VariationModule(
        feature_channels=stem.out_channels, hidden_channels=model.variation_hidden_channels,
        latent_channels=model.variation_latent_channels, num_downsample=model.variation_num_downsample,
        seed=data.seed, name="variation")
    return JSIA(alignment, content_encoder, generators, discriminators, modality_discriminator, variation,
                image_size=(data.height, data.width), generation_scale=model.generation_scale,
                modality_bn=model.modality_bn, generated_bn=model.generated_bn,
                reid_batch_size=data.num_ids * data.num_instances,
                gan_batch_size=data.gan_num_ids * data.gan_num_instances, gan_num_instances=data.gan_num_instances,
                triplet_margin=loss.triplet_margin, label_smoothing=loss.label_smoothing,
                il_convention=loss.il_convention, variation_distribution=loss.variation_distribution,
                ui_direction=loss.ui_direction, local=loss.local)


@dataclasses.dataclass(eq=False)
class JSIA:
    """The networks of JSIA-ReID and what they compute together (:func:`build_jsia` makes
    one from a run's config).

    Attributes:
      alignment: module F (:class:`~jsia_tf.models.alignment.FeatureAlignment`), the
        embedder; its ``set_level_encoder`` is E^sl = E^i.
      content_encoder: E^i: F's E^sl with ``--sl=shared`` (the paper), its own copy
        of the stem otherwise.
      generators: {modality: module G's generator (style encoder, MLP, decoder)}.
      discriminators: {modality: multi-scale LSGAN discriminator}.
      modality_discriminator: with ``--sl=gan``, the modality discriminator on E^sl's
        maps (Table 3, index 7); None otherwise.
      variation: module V.
      image_size: (height, width) of module F's input images.
      generation_scale: module G works on images this many times smaller (1 or 2).
      modality_bn, generated_bn: :meth:`per_modality`'s and :meth:`on_generated`'s
        modes (``config.MODALITY_BN``, ``config.GENERATED_BN``).
      reid_batch_size, gan_batch_size: images per modality of the GLOBAL re-ID and
        generation batches, the denominators of the loss means.
      gan_num_instances: images per identity of the generation batch (Eq. 14 mixes
        each image with the image of the next identity).
      triplet_margin, label_smoothing: Eq. 13's.
      il_convention, variation_distribution, ui_direction: the conventions of Eqs. 11-12,
        Eq. 10 and Eq. 15 (:mod:`jsia_tf.losses`).
      local: Eq. 12 on generated pairs ("paired") or on the real images ("unpaired").
    """

    alignment: alignment_lib.FeatureAlignment
    content_encoder: typing.Any
    generators: dict
    discriminators: dict
    modality_discriminator: ModalityDiscriminator | None
    variation: VariationModule
    _: dataclasses.KW_ONLY
    image_size: tuple
    generation_scale: int
    modality_bn: str
    generated_bn: str
    reid_batch_size: int
    gan_batch_size: int
    gan_num_instances: int
    triplet_margin: float
    label_smoothing: float
    il_convention: str
    variation_distribution: str
    ui_direction: str
    local: str

    def __post_init__(self):
        # E^sl downsamples by 4: two x2 upsamplings give back the input size (Sec. 4.2), one
        # gives half of it (--generation_scale=2, the official code's GAN images).
        self.generation_size = tuple(size // self.generation_scale for size in self.image_size)
        self._build_variables()

    def _build_variables(self):
        """Creates every variable with one inference-mode call on a dummy batch."""
        images = tf.zeros([2, *self.image_size, 3])
        self.alignment(images, training=False)
        maps = self.content(images, training=False)
        for m in MODALITIES:
            self.generators[m](maps, self.to_generation(images))
            self.discriminators[m](self.to_generation(images))
        if self.modality_discriminator is not None:
            self.modality_discriminator(self.alignment.set_level(images, training=False))
        self.variation(maps, training=False)

    @property
    def networks(self):
        """Name -> every network (the checkpoint's names)."""
        models = {"alignment": self.alignment, "generator_rgb": self.generators["rgb"],
                  "generator_ir": self.generators["ir"], "discriminator_rgb": self.discriminators["rgb"],
                  "discriminator_ir": self.discriminators["ir"], "variation": self.variation}
        if self.content_encoder is not self.alignment.set_level_encoder:
            models["content_encoder"] = self.content_encoder
        if self.modality_discriminator is not None:
            models["modality_discriminator"] = self.modality_discriminator
        return models

    def variable_groups(self):
        """{group: trainable variables} for :data:`jsia_tf.config.GROUPS`: module G (with a
        separate E^i), the discriminators, E^sl, E^il with the classifiers, module V."""
        alignment = self.alignment
        generation = [v for m in MODALITIES for v in self.generators[m].trainable_variables]
        if "content_encoder" in self.networks:
            generation += self.content_encoder.trainable_variables
        instance_level = alignment.instance_level_encoder.trainable_variables + alignment.classifier.trainable_variables
        for classifier in alignment.local_classifiers:
            instance_level += classifier.trainable_variables
        discriminators = [v for m in MODALITIES for v in self.discriminators[m].trainable_variables]
        if self.modality_discriminator is not None:
            discriminators += self.modality_discriminator.trainable_variables
        return {"generation": generation, "discriminators": discriminators,
                "reid_set_level": alignment.set_level_encoder.trainable_variables,
                "reid_instance_level": instance_level, "variation": self.variation.trainable_variables}

    # -- forward passes ------------------------------------------------------------------

    def to_generation(self, images):
        """Module G's view of caffe-normalised images [B, H, W, 3]: unit range, at
        ``generation_size`` (area-averaged when G works at a smaller scale)."""
        if self.generation_scale > 1:
            images = tf.image.resize(images, self.generation_size, method="area")
        return to_unit_range(images)

    def to_alignment(self, images):
        """Module F's view of module G's unit-range images: caffe-normalised at F's input
        size (bilinear upsampling when G works at a smaller scale, as the official code's
        encoder does with its 128x64 GAN images)."""
        images = from_unit_range(images)
        if self.generation_scale > 1:
            images = tf.image.resize(images, self.image_size, method="bilinear")
        return images

    def per_modality(self, fn, rgb, ir):
        """``fn`` on an RGB and an IR batch: {"rgb": fn(rgb), "ir": fn(ir)}.

        With ``modality_bn="joint"`` (default) ``fn`` runs once on the concatenated batch
        and its outputs are split, so every batch norm normalises both modalities with
        one set of statistics, as the moving statistics will at test time; normalised
        per modality ("separate", the official code) the network never sees the modality
        gap in training, and the mixed moving statistics bring it back at test. AGW's
        cross-modal baseline concatenates for this reason.
        """
        if self.modality_bn == "separate":
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
        mode = self.generated_bn
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

    def generate(self, rgb, ir, training=True):
        """Module G on an id-aligned pair of batches (Eqs. 1-6).

        Args:
          rgb, ir: caffe-normalised [B, H, W, 3]; rgb[i] and ir[i] show the same person.
        Returns:
          a dict of per-modality dicts ("rgb"/"ir" keys) of unit-range images (at
          ``generation_size`` (h, w)) or codes: "real" [B, h, w, 3], "content" M^i
          [B, H/4, W/4, C] (E^i reads the full-size images), "style" [B, style_dim],
          "recon" (Eq. 4's decodings), "cross" ({"rgb": X_ir2rgb, "ir": X_rgb2ir}: the
          generated image OF that modality), "cycle" (Eq. 6), "recoded" (per modality m,
          the "content" and "style" codes of the generated image of m, re-encoded).
        """
        g = self.generators
        out = {"real": {"rgb": self.to_generation(rgb), "ir": self.to_generation(ir)},
               "content": self.per_modality(lambda x: self.content(x, training), rgb, ir)}
        content, style = out["content"], {m: g[m].encode_style(out["real"][m]) for m in MODALITIES}
        out["style"], out["recon"], out["cross"] = style, {}, {}
        for m, other in (("rgb", "ir"), ("ir", "rgb")):
            # Eq. 4's G_m(M^i_m, s_m) and the generated image of modality m, X_ir2rgb =
            # G_rgb(M^i_ir, s_rgb) (X_rgb2ir likewise): the style of the paired person ("we
            # only exchange features intra-person", Sec. 3.1). One decoder call for both:
            # its norms are per image, so the batch is only faster.
            both = g[m].decode(tf.concat([content[m], content[other]], 0), tf.concat([style[m], style[m]], 0))
            out["recon"][m], out["cross"][m] = tf.split(both, 2, axis=0)
        # Eq. 6: X_rgb2ir2rgb = D_rgb(E^i(X_rgb2ir), E^s_rgb(X_ir2rgb)), and symmetrically.
        cycle_content = self.on_generated(lambda t: self.per_modality(
            lambda x: self.content(x, t), self.to_alignment(out["cross"]["rgb"]), self.to_alignment(out["cross"]["ir"])),
            training)  # {"rgb": E^i(X_ir2rgb), "ir": E^i(X_rgb2ir)}
        cycle_style = {m: g[m].encode_style(out["cross"][m]) for m in MODALITIES}  # {"rgb": E^s_rgb(X_ir2rgb), ...}
        out["cycle"] = {
            "rgb": g["rgb"].decode(cycle_content["ir"], cycle_style["rgb"]),
            "ir": g["ir"].decode(cycle_content["rgb"], cycle_style["ir"]),
        }
        # The codes the generated image of modality m re-encodes to: E^i(X_ir2rgb) is the
        # content it was decoded from (M^i_ir), E^s_rgb(X_ir2rgb) the style (s_rgb).
        out["recoded"] = {m: {"content": cycle_content[other], "style": cycle_style[m]}
                          for m, other in (("rgb", "ir"), ("ir", "rgb"))}
        return out

    def decode_mixture(self, modality, codes_1, codes_2, alpha):
        """Eq. 14, then D^v (Eq. 9) and the modality's decoder (Eq. 3): unit-range [B, h, w, 3].

        ``codes_1``, ``codes_2``: (z [B, h', w', Z], style [B, style_dim]) pairs; alpha [B],
        the weight of codes_1. Training (UI), the summaries and ``analyze`` all mix here.
        """
        (z_1, s_1), (z_2, s_2) = codes_1, codes_2
        return self.generators[modality].decode(self.variation.decode(mix(z_1, z_2, alpha)), mix(s_1, s_2, alpha))

    # -- the loss terms --------------------------------------------------------------------

    def losses(self, reid_batch, gan_batch, terms, alpha=None, training=True, gather=None):
        """The loss terms of Eqs. 4-16 named in ``terms``, on one replica's batches.

        Module G, V and the alignment terms use the generation batch, Eq. 13 the re-ID
        batch. Each term is a per-example loss averaged over the GLOBAL batch
        (``losses.mean_over_global_batch``): summed over replicas it is the global mean.
        Which variables each term may train is declared in :data:`jsia_tf.terms.TERMS`; the
        stop-gradients below keep each term off the networks it only reads.

        Args:
          reid_batch, gan_batch: pipeline batches (dicts "rgb", "ir", "rgb_labels",
            "ir_labels"), id-major so that rgb[i] and ir[i] show the same person.
          terms: names from :func:`jsia_tf.routing.configured_terms`.
          alpha: [B] Eq. 14 mixing ratios of the generation batch (needed for "ui").
          gather: ``value [b, ...] -> [R b, ...]``, every replica's values in replica
            order, differentiable (the triplet anchors mine in the global batch); None:
            this replica's alone.
        Returns:
          {term: float32 scalar}.
        """
        terms = set(terms)
        mean = losses.mean_over_global_batch
        gan_size = self.gan_batch_size
        out = {}
        if terms - set(routing.REID_BATCH_TERMS):
            gen = self.generate(gan_batch["rgb"], gan_batch["ir"], training=training)
            real, fake, d = gen["real"], gen["cross"], self.discriminators
            # Module G (Sec. 3.1): Eq. 4 self-reconstruction, Eqs. 5-6 cycle, Eq. 7 LSGAN.
            if "recon" in terms:
                out["recon"] = mean(sum(losses.l1_per_example(gen["recon"][m], real[m]) for m in MODALITIES), gan_size)
            if "cycle" in terms:
                out["cycle"] = mean(sum(losses.l1_per_example(gen["cycle"][m], real[m]) for m in MODALITIES), gan_size)
            if "gan" in terms:
                out["gan"] = mean(sum(losses.lsgan_generator_loss(d[m](fake[m])) for m in MODALITIES), gan_size)
            if "code" in terms:  # the official code's re-encoded codes (MUNIT), see config.LossConfig.lambda_code
                out["code"] = mean(sum(
                    losses.l1_per_example(gen["recoded"][m]["content"], gen["content"][other])
                    + losses.l1_per_example(gen["recoded"][m]["style"], gen["style"][m])
                    for m, other in (("rgb", "ir"), ("ir", "rgb"))), gan_size)
            if "discriminator" in terms:
                per_image = []
                for m in MODALITIES:  # real and detached fake images in one call (D has no norm)
                    scores = d[m](tf.concat([real[m], tf.stop_gradient(fake[m])], 0))  # per scale [2B, h, w, 1]
                    on_real, on_fake = zip(*(tf.split(score, 2, axis=0) for score in scores))
                    per_image.append(losses.lsgan_discriminator_loss(on_real, on_fake))
                out["discriminator"] = mean(tf.add_n(per_image), gan_size)
            # Module V (Sec. 3.2) on the stopped maps M^i of both modalities: Eq. 9, Eq. 10.
            z = None  # {modality: V's latent codes}, for Eq. 14
            if terms & {"variation", "ui"}:
                maps = tf.stop_gradient(tf.concat([gen["content"]["rgb"], gen["content"]["ir"]], 0))  # [2B, h, w, C]
                z_both, mu, tau = self.variation(maps, training=training)
                z = dict(zip(MODALITIES, tf.split(z_both, 2, axis=0)))
                if "variation" in terms:
                    out["variation"] = mean(losses.variation_loss(
                        maps, self.variation.decode(z_both), mu, tau, self.variation_distribution), 2 * gan_size)
            if terms & {"il", "local", "ui"}:
                out.update(self._alignment_losses(gen, z, gan_batch, terms, alpha, training))
        if terms & set(routing.REID_BATCH_TERMS):
            out.update(self._reid_losses(reid_batch, terms, training, gather))
        return out

    def _alignment_losses(self, gen, z, gan_batch, terms, alpha, training):
        """Module F on the generation batch (Sec. 3.3): Eq. 11, Eq. 12, Eqs. 14-15.

        Eq. 11 and Eq. 12 ("paired") compare each real image with its detached generated
        pair: the generated images are inputs, the alignment trains F only.
        ``--local=unpaired`` compares, in Eq. 12, each real image with the real image
        of the other modality at the same batch position (the same person). Returns
        {term: float32 scalar} of those of ``terms``.
        """
        out = {}
        mean = losses.mean_over_global_batch
        gan_size = self.gan_batch_size
        alignment = self.alignment
        unpaired = self.local == "unpaired"
        paired = terms & ({"il"} if unpaired else {"il", "local"})  # terms on (real, generated) pairs
        if self.content_encoder is alignment.set_level_encoder:  # M = E^sl(X) is already there
            real = self.per_modality(lambda maps: alignment.instance_level(maps, training=training),
                                     gen["content"]["rgb"], gen["content"]["ir"])
        else:
            real = self.per_modality(lambda x: alignment(x, training=training), gan_batch["rgb"], gan_batch["ir"])
        if "local" in terms and unpaired:
            out["local"] = mean(losses.unpaired_local_alignment_loss(
                real["ir"]["local_logits"], real["rgb"]["local_logits"], self.il_convention), gan_size)
        if paired:
            fake = self.on_generated(lambda t: self.per_modality(
                lambda x: alignment(x, training=t), self.to_alignment(tf.stop_gradient(gen["cross"]["rgb"])),
                self.to_alignment(tf.stop_gradient(gen["cross"]["ir"]))), training)
            if "il" in paired:  # Eq. 11
                out["il"] = mean(losses.instance_alignment_loss(
                    real["ir"]["logits"], fake["rgb"]["logits"], real["rgb"]["logits"], fake["ir"]["logits"],
                    self.il_convention), gan_size)
            if "local" in paired:  # Eq. 12
                out["local"] = mean(losses.local_alignment_loss(
                    real["ir"]["local_logits"], fake["rgb"]["local_logits"], real["rgb"]["local_logits"],
                    fake["ir"]["local_logits"], self.il_convention), gan_size)
        if "ui" in terms:
            # Eq. 14: each image's codes mixed with those of the image K further (the next
            # identity of the id-major batch), decoded into an unseen identity; Eq. 15 asks
            # F to predict the same mixture of the two identities' predictions.
            shift = self.gan_num_instances
            mixed = {}
            for m in MODALITIES:
                codes = (z[m], gen["style"][m])
                mixed[m] = tf.stop_gradient(self.to_alignment(self.decode_mixture(
                    m, codes, tuple(tf.roll(c, shift, axis=0) for c in codes), alpha)))  # [B, H, W, 3]
            mix_out = self.on_generated(lambda t: self.per_modality(
                lambda x: alignment(x, training=t)["logits"], mixed["rgb"], mixed["ir"]), training)
            per_image = [losses.unseen_identity_loss(mix_out[m], real[m]["logits"],
                                                     tf.roll(real[m]["logits"], shift, axis=0), alpha,
                                                     self.ui_direction) for m in MODALITIES]
            out["ui"] = mean(tf.concat(per_image, 0), 2 * gan_size)  # [2B]
        return out

    def _reid_losses(self, reid_batch, terms, training, gather):
        """Module F on the re-ID batch: Eq. 13, each C^k's identity loss, and (Table 3,
        index 7) the modality GAN on E^sl's maps: {term: float32 scalar} of those of ``terms``."""
        out = {}
        mean = losses.mean_over_global_batch
        size = 2 * self.reid_batch_size  # both modalities
        instance = bool(terms & {"id_cls", "id_triplet", "local_id"})

        def forward(images):
            maps = self.alignment.set_level(images, training=training)  # M = E^sl(X) [B, H/4, W/4, C]
            return {"maps": maps, **(self.alignment.instance_level(maps, training=training) if instance else {})}

        reid = self.per_modality(forward, reid_batch["rgb"], reid_batch["ir"])
        discriminator = self.modality_discriminator
        if "modality_discriminator" in terms:  # trains the discriminator only: stopped maps
            out["modality_discriminator"] = mean(losses.lsgan_modality_discriminator_loss(
                discriminator(tf.stop_gradient(reid["rgb"]["maps"])),
                discriminator(tf.stop_gradient(reid["ir"]["maps"]))), size)
        if "modality_adversarial" in terms:  # pushes every score to 1/2
            scores = tf.concat([discriminator(reid[m]["maps"]) for m in MODALITIES], 0)  # [2B]
            out["modality_adversarial"] = mean(losses.lsgan_modality_confusion_loss(scores), size)
        labels = {m: reid_batch[f"{m}_labels"] for m in MODALITIES}
        if "id_cls" in terms:  # Eq. 13, the official mean of the RGB and IR means
            out["id_cls"] = mean(tf.concat([losses.label_smoothed_cross_entropy(
                labels[m], reid[m]["logits"], self.label_smoothing) for m in MODALITIES], axis=0), size)
        if "local_id" in terms:
            # PCB (Sun et al. 2018), which Sec. 3.3's LR follows: each C^k is an identity
            # classifier of its stripe; Eq. 12's KL then aligns trained classifiers.
            out["local_id"] = mean(tf.concat([
                tf.add_n([losses.label_smoothed_cross_entropy(labels[m], logits, self.label_smoothing)
                          for logits in reid[m]["local_logits"]]) / len(reid[m]["local_logits"])
                for m in MODALITIES], axis=0), size)  # [2B], the mean over the n regions
        if "id_triplet" in terms:
            # Eq. 13: this replica's anchors mine in the GLOBAL batch of the other modality.
            out["id_triplet"] = mean(losses.cross_modal_triplet_loss(
                reid["rgb"]["features"], reid["ir"]["features"], labels["rgb"], labels["ir"], self.triplet_margin,
                gallery=gather), size)  # [2B]
        return out
