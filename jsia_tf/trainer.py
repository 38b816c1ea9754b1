"""The JSIA-ReID training step: modules F, G, V and the discriminators trained jointly (Sec. 4.2).

:class:`Trainer` owns the model (:class:`jsia_tf.models.jsia.JSIA`), one AdamW
optimizer per variable group (:data:`jsia_tf.config.GROUPS`) and one ``tf.function``
step per training phase. A step (:meth:`Trainer._replica_step`, on each replica):

1. the loss terms of Eqs. 4-16 the phase needs (``JSIA.losses``), on one re-ID batch
   (P x K images per modality) and one generation batch (the official code's smaller
   P x K batch for module G), both id-major;
2. the objectives and each stepped group's gradient of only the terms routed to it
   (:mod:`jsia_tf.routing`): the pre-training phase computes only the objectives of
   modules G and V and of the discriminators (``Phase.objectives``), so the re-ID stem,
   when that phase steps it (``--pretrain_set_level``), learns from module G's terms
   alone; the discriminators never learn from the generator's term;
3. each group's optimizer applies its gradient; the step returns every term, the
   Eq. 8 and Eq. 16 totals and per-group gradient norms, reduced over replicas.

Mixed precision: under ``mixed_float16`` each group's optimizer is a
``keras.optimizers.LossScaleOptimizer`` (dynamic scale, Keras' defaults); the objectives
are scaled per route (``routing.gradients``), each optimizer unscales and skips its
update on non-finite gradients on its own. The reported gradient norms are unscaled (0
for a skipped group), "loss_scale/<group>" is the scale the step used, and the losses
are never scaled, so a non-finite loss still stops training (:func:`check_finite`).
"""

import functools
import math

import keras
import numpy as np
import tensorflow as tf

from jsia_tf import config as config_lib
from jsia_tf import distribute, routing
from jsia_tf.models.jsia import build_jsia

GROUPS = config_lib.GROUPS
# Adam's epsilon: PyTorch's default, which the official code ran with (Keras: 1e-7).
ADAM_EPSILON = 1e-8


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


class FusedAdamW(keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` whose per-variable Adam update is one fused kernel.

    Keras writes the update as about 25 small ops per variable; ``ResourceApplyAdam``
    computes the same (m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, var -= lr
    sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)) in one, on the same slot
    variables, so checkpoints are unchanged; the decoupled weight decay stays Keras'.
    Fewer ops trace and optimise faster (docs/BENCHMARKS.md) and launch fewer kernels
    on a GPU. Equal to Keras' AdamW within 3e-7 after 5 steps.
    """

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        # .value.handle: the slot's tf.Variable (under a strategy, this device's copy).
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].value.handle, v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


def _replica_id():
    context = tf.distribute.get_replica_context()
    return 0 if context is None else context.replica_id_in_sync_group


class Trainer:
    """The model, its optimizers and training steps.

    Attributes:
      model: the :class:`~jsia_tf.models.jsia.JSIA` networks; ``model.alignment`` is
        module F, the embedder.
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
        with self.strategy.scope():
            self.model = build_jsia(config, num_classes, synchronized=self.strategy.num_replicas_in_sync > 1)
            self.groups = self.model.variable_groups()
            everything = [v for network in self.model.networks.values() for v in network.trainable_variables]
            check_variable_groups(self.groups, list({id(v): v for v in everything}.values()))
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
        self.term_weights = routing.term_weights(config.loss)
        self.terms = routing.configured_terms(config)
        self._step_functions = {}
        self._embed = tf.function(self.model.alignment.embed, reduce_retracing=True)

    # -- construction -------------------------------------------------------------------

    @property
    def loss_scaling(self):
        """Whether the losses are scaled dynamically (``--mixed_precision=mixed_float16``)."""
        return self.config.train.mixed_precision == "mixed_float16"

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
        return FusedAdamW(learning_rate=lr, beta_1=beta1, beta_2=beta2, weight_decay=weight_decay,
                          epsilon=ADAM_EPSILON, name=f"adamw_{group}")

    def checkpoint(self):
        """A ``tf.train.Checkpoint`` of every network, optimizer, the step and V's noise state, by name."""
        optimizers = {f"optimizer_{name}": optimizer for name, optimizer in self.optimizers.items()}
        settings = {f"optimizer_settings_{name}": value for name, value in self.optimizer_settings.items()}
        return tf.train.Checkpoint(step=self.step, variation_seed=self.model.variation.seed_generator.state,
                                   **self.model.networks, **optimizers, **settings)

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

    def terms_for(self, groups, objectives=()):
        """The terms a phase stepping ``groups`` computes: those it has updating one of them, weight > 0,
        of one of ``objectives`` (empty: any)."""
        return routing.terms_for(self.terms, self.term_weights, groups, objectives)

    def mixing_ratios(self, batch_size):
        """alpha ~ U[0, 1] per example (Eq. 14), stateless from (data seed, step): drawn for
        the global batch, this replica's slice, so alpha is what one device would draw."""
        seed = tf.stack([tf.constant(self.config.data.seed, tf.int64), tf.convert_to_tensor(self.step)])
        replicas = self.strategy.num_replicas_in_sync
        return tf.random.stateless_uniform([replicas, batch_size], seed)[_replica_id()]

    def compute_losses(self, reid_batch, gan_batch, terms=None, training=True):
        """``JSIA.losses`` of ``terms`` (default: all of :attr:`terms`) with this step's Eq. 14 ratios."""
        terms = self.terms if terms is None else terms
        unknown = set(terms) - set(self.terms)
        if unknown:
            raise ValueError(f"loss terms {sorted(unknown)} are not computed in this configuration; expected "
                             f"names from {list(self.terms)}")
        alpha = self.mixing_ratios(tf.shape(gan_batch["rgb"])[0]) if "ui" in terms else None
        return self.model.losses(reid_batch, gan_batch, terms, alpha, training, gather=distribute.from_all_replicas)

    # -- gradients and steps --------------------------------------------------------------

    def loss_scales(self, groups):
        """{group: its optimizer's current dynamic loss scale} under ``mixed_float16``, else None."""
        if not self.loss_scaling:
            return None
        # Values, not the variables: the optimizers update the scales within the step.
        return {name: tf.identity(self.optimizers[name].dynamic_scale.value) for name in groups}

    def _replica_step(self, groups, terms, reid_batch, gan_batch):
        scales = self.loss_scales(groups)  # read before the optimizers update them
        with tf.GradientTape(persistent=True) as tape:
            values = self.compute_losses(reid_batch, gan_batch, terms)
            objectives = routing.objectives(values, self.term_weights, groups, scales)
        grads, stem_norms = routing.gradients(tape, objectives, {name: self.groups[name] for name in groups},
                                              scales)
        del tape
        for name in groups:
            # A LossScaleOptimizer unscales, and skips the update on non-finite gradients.
            self.optimizers[name].apply_gradients(zip(grads[name], self.groups[name]))
        scalars = {f"loss/{term}": value for term, value in values.items()}
        scalars.update(routing.totals(values, self.term_weights))
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

    def _make_step(self, groups, objectives):
        terms = self.terms_for(groups, objectives)

        replica_step = functools.partial(self._replica_step, groups, terms)
        if self.config.train.jit_compile:  # XLA per replica, as Keras' own fit does under a strategy
            replica_step = tf.function(replica_step, jit_compile=True, autograph=False)

        # No autograph: the step's Python control flow depends only on the config, so
        # converting its source buys nothing but tracing time (docs/BENCHMARKS.md).
        @tf.function(autograph=False)
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
        return self.step_function(phase)(reid_batch, gan_batch)

    def step_function(self, phase):
        """The ``tf.function`` of ``phase``'s step, one per set of stepped groups and objectives; it
        traces on its first call (``bench/train_step.py`` times the tracing apart with
        ``get_concrete_function``)."""
        key = tuple(g for g in GROUPS if g in phase.groups), tuple(phase.objectives)
        if key not in self._step_functions:
            self._step_functions[key] = self._make_step(*key)
        return self._step_functions[key]

    def set_learning_rates(self, rates):
        """Assigns {group: learning rate} (``TrainConfig.learning_rates_at``) to the optimizers."""
        for name, value in rates.items():
            self.optimizers[name].learning_rate = value

    # -- inference --------------------------------------------------------------------------

    def embed(self, images):
        """Eq. 17: L2-normalised test features [B, D] (numpy) of caffe-normalised images."""
        return self._embed(tf.convert_to_tensor(images)).numpy()

    def embed_images(self, batches):
        """Features [N, D] of every batch of ``batches`` (e.g. ``pipeline.eval_dataset``)."""
        return np.concatenate([self.embed(batch) for batch in batches])
