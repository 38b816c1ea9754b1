"""The Trainer at tiny sizes: variable groups, loss routing, steps, checkpoints, the non-finite guard,
Table 3's switches and mixed_float16 loss scaling."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_script_json
from smoke_model import smoke_model
from jsia_tf import config as config_lib
from jsia_tf import losses
from jsia_tf import routing
from jsia_tf import train as train_lib
from jsia_tf import trainer as trainer_lib

NUM_CLASSES = 4
HEIGHT, WIDTH = 32, 16


def tiny_config(run_dir="run", loss=None, mixed_precision="float32", **model_overrides):
    """The smoke preset's networks (configs/smoke.flags) at 32x16, 2 ids x 2 images.

    ``loss``: LossConfig fields to override (Table 3's switches).
    """
    model = smoke_model(**model_overrides)
    data = config_lib.DataConfig(data_dir="data", height=HEIGHT, width=WIDTH, num_ids=2, num_instances=2,
                                 gan_num_ids=2, gan_num_instances=2)
    # lambda 1 for IL / LR / UI so that their (small at initialisation) gradients are clear,
    # and the official code's re-encoded codes (off by default) so that every term is here.
    loss = config_lib.LossConfig(**{"lambda_il": 1.0, "lambda_local": 1.0, "lambda_ui": 1.0, "lambda_code": 1.0,
                                    **(loss or {})})
    # The official warm-up (E^sl not stepped in pre-training), whose routing these tests pin;
    # test_pretraining_steps_the_stem_with_module_g_terms_alone covers the default.
    train = config_lib.TrainConfig(phases=config_lib.paper_phases(1, 1, (), model.generation,
                                                                  pretrain_set_level=False),
                                   steps_per_epoch=2, lr=1e-3, mixed_precision=mixed_precision)
    return config_lib.Config(run_dir=str(run_dir), data=data, model=model, loss=loss,
                             train=train)


def fixed_batch(seed, size=4, nan=False):
    """A pipeline-like batch: caffe-normalised images, id-major labels (2 ids x 2)."""
    rng = np.random.default_rng(seed)
    labels = tf.constant(np.repeat(np.arange(size // 2), 2), tf.int32)
    batch = {m: tf.constant(rng.normal(0.0, 60.0, (size, HEIGHT, WIDTH, 3)).astype(np.float32))
             for m in ("rgb", "ir")}
    if nan:
        batch["rgb"] = tf.fill(batch["rgb"].shape, np.nan)
    return {**batch, "rgb_labels": labels, "ir_labels": labels}


MODALITY_TERMS = {"modality_discriminator", "modality_adversarial"}


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def _reached(tape, value, groups):
    """Names of the groups holding a variable with a non-zero gradient of ``value``."""
    return {name for name, group in groups.items()
            if any(g is not None and np.any(g.numpy() != 0) for g in tape.gradient(value, group))}


@pytest.fixture(scope="module")
def trainer():
    return trainer_lib.Trainer(tiny_config(), NUM_CLASSES)


@pytest.fixture
def eager():
    """tf.functions run eagerly: a step of the tiny networks takes seconds instead of a minute of tracing."""
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)


def test_groups_are_disjoint_and_cover_every_trainable_variable(trainer):
    assert set(trainer.groups) == set(config_lib.GROUPS)
    ids = [id(v) for group in trainer.groups.values() for v in group]
    assert len(ids) == len(set(ids))
    everything = {id(v) for model in trainer.model.networks.values() for v in model.trainable_variables}
    assert set(ids) == everything
    assert all(trainer.groups[name] for name in config_lib.GROUPS)
    # The check itself raises on overlap and on a missing variable.
    groups = dict(trainer.groups)
    with pytest.raises(ValueError, match="in two groups"):
        trainer_lib.check_variable_groups({**groups, "variation": groups["variation"] + groups["generation"][:1]},
                                          [v for g in groups.values() for v in g])
    with pytest.raises(ValueError, match="in no group"):
        trainer_lib.check_variable_groups({**groups, "variation": groups["variation"][1:]},
                                          [v for g in groups.values() for v in g])


def test_set_level_encoder_is_the_modality_invariant_encoder(trainer):
    """SL shared (Sec. 3.3): E^i and E^sl are one network, its variables in reid_set_level only."""
    assert trainer.model.content_encoder is trainer.model.alignment.set_level_encoder
    assert "content_encoder" not in trainer.model.networks
    set_level = {id(v) for v in trainer.model.alignment.set_level_encoder.trainable_variables}
    assert set_level == {id(v) for v in trainer.groups["reid_set_level"]}
    images = fixed_batch(0)["rgb"]
    np.testing.assert_array_equal(trainer.model.content(images, training=False),
                                  trainer.model.alignment.set_level(images, training=False))


def test_separate_set_level_encoder_belongs_to_generation():
    """The ablation without SL (Table 3): E^i is its own copy of the stem, stepped with module G."""
    separate = trainer_lib.Trainer(tiny_config(sl="separate"), NUM_CLASSES)
    assert separate.model.content_encoder is not separate.model.alignment.set_level_encoder
    generation = {id(v) for v in separate.groups["generation"]}
    assert {id(v) for v in separate.model.content_encoder.trainable_variables} <= generation
    assert not generation & {id(v) for v in separate.groups["reid_set_level"]}


def test_each_loss_reaches_exactly_its_groups(trainer):
    """ROUTING: the gradient of every term is non-zero on its routed groups and nowhere else,
    except the generator's LSGAN term, which reads (never steps) the discriminators."""
    reid_batch, gan_batch = fixed_batch(1), fixed_batch(2)
    with tf.GradientTape(persistent=True) as tape:
        values = trainer.compute_losses(reid_batch, gan_batch)
    assert set(values) == set(trainer.terms) == set(routing.TERM_ROUTES) - MODALITY_TERMS
    for term, value in values.items():
        assert np.isfinite(value.numpy()), term
        expected = set(routing.TERM_ROUTES[term]) | ({"discriminators"} if term == "gan" else set())
        assert _reached(tape, value, trainer.groups) == expected, term


def test_re_encoded_codes_term_compares_each_generated_image_with_its_sources(trainer, monkeypatch):
    """--lambda_code: X_ir2rgb's re-encoded content against M^i_ir (the content it was
    decoded from), its re-encoded style against s_rgb; X_rgb2ir likewise. Hand values:
    |1.5 - 1| + |0.25 - 0| for X_ir2rgb, |-2 - 0| + |1 - 0| for X_rgb2ir, per example."""
    size = 4
    zeros, ones = tf.zeros([size, 2, 2, 3]), tf.ones([size, 2, 2, 3])
    gen = {"real": {}, "cross": {}, "content": {"rgb": zeros, "ir": ones}, "style": {"rgb": tf.zeros([size, 8]), "ir": tf.zeros([size, 8])},
           "recoded": {"rgb": {"content": ones + 0.5, "style": tf.fill([size, 8], 0.25)},
                       "ir": {"content": zeros - 2.0, "style": tf.ones([size, 8])}}}
    monkeypatch.setattr(trainer.model, "generate", lambda rgb, ir, training=True: gen)
    values = trainer.compute_losses(fixed_batch(1), fixed_batch(2), terms=["code"])
    assert float(values["code"]) == pytest.approx(0.5 + 0.25 + 2.0 + 1.0)


def test_pretrain_phase_leaves_the_reid_encoders_out(trainer):
    pretrain, joint = trainer.config.train.phases
    assert set(trainer.terms_for(pretrain.groups)) == {"recon", "cycle", "gan", "code", "discriminator", "variation"}
    assert set(trainer.terms_for(joint.groups)) == set(routing.TERM_ROUTES) - MODALITY_TERMS
    # An objective holds only terms routed to its groups; reid_set_level is not stepped in pretraining.
    values = {term: tf.constant(1.0) for term in trainer.terms_for(pretrain.groups)}
    objectives = routing.objectives(values, trainer.term_weights, pretrain.groups)
    assert set(objectives) == {(("generation",), "generator"), (("discriminators",), "discriminator"),
                               (("variation",), "variation")}
    # recon + lambda_cyc + lambda_gan + lambda_code
    assert float(objectives[(("generation",), "generator")]) == pytest.approx(1.0 + 10.0 + 1.0 + 1.0)


def test_pretraining_steps_the_stem_with_module_g_terms_alone(eager):
    """--pretrain_set_level (the default of jsia_tf.train): G's pre-training also steps
    E^sl = E^i, computing only the objectives of G, V and the discriminators, so E^sl moves
    by L^G alone and E^il and the classifiers stay."""
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, phases=config_lib.paper_phases(1, 1, (), generation=True, pretrain_set_level=True)))
    t = trainer_lib.Trainer(cfg, NUM_CLASSES)
    pretrain = cfg.train.phases[0]
    assert pretrain.objectives == config_lib.PRETRAIN_OBJECTIVES
    assert set(t.terms_for(pretrain.groups, pretrain.objectives)) == {"recon", "cycle", "gan", "code",
                                                                        "discriminator", "variation"}
    before = {name: _values(group) for name, group in t.groups.items()}
    scalars = t.train_step(pretrain, fixed_batch(1), fixed_batch(2))
    changed = {name for name, group in t.groups.items()
               if any(np.any(b != a) for b, a in zip(before[name], _values(group)))}
    assert changed == {"generation", "discriminators", "variation", "reid_set_level"}
    assert not {"loss/id_cls", "loss/id_triplet", "loss/local_id"} & set(scalars)
    stem = {name for name in scalars if name.startswith("grad_norm/reid_set_level/")}
    assert stem == {"grad_norm/reid_set_level/generator"} and float(scalars[stem.pop()]) > 0


def test_discriminator_step_changes_only_the_discriminators(trainer):
    others = [v for name, group in trainer.groups.items() if name != "discriminators" for v in group]
    before_others, before_d = _values(others), _values(trainer.groups["discriminators"])
    scalars = trainer.train_step(config_lib.Phase("d_only", 1, ("discriminators",)), fixed_batch(3), fixed_batch(4))
    assert set(scalars) == {"loss/discriminator", "loss/total", "grad_norm/discriminators"}
    for before, after in zip(before_others, _values(others)):
        np.testing.assert_array_equal(before, after)
    assert any(np.any(b != a) for b, a in zip(before_d, _values(trainer.groups["discriminators"])))


def test_joint_steps_on_a_fixed_batch_lower_the_identity_and_reconstruction_losses(trainer):
    _, joint = trainer.config.train.phases
    reid_batch, gan_batch = fixed_batch(5), fixed_batch(6)
    step = int(trainer.step.numpy())
    history = [trainer.train_step(joint, reid_batch, gan_batch) for _ in range(8)]
    assert int(trainer.step.numpy()) == step + 8
    first, last = history[0], history[-1]
    assert {f"loss/{t}" for t in trainer.terms} <= set(first)
    assert {f"grad_norm/{g}" for g in config_lib.GROUPS} <= set(first)
    assert all(float(first[f"grad_norm/{g}"]) > 0 for g in config_lib.GROUPS)
    # What each objective sends into the shared stem E^sl (L^G, re-ID, alignment).
    assert all(float(first[f"grad_norm/reid_set_level/{o}"]) > 0 for o in ("generator", "reid", "alignment"))
    id_loss = [float(s["loss/id_cls"]) + float(s["loss/id_triplet"]) for s in (first, last)]
    assert id_loss[1] < id_loss[0]
    assert float(last["loss/recon"]) < float(first["loss/recon"])


def test_checkpoint_restores_every_variable(trainer, tmp_path):
    trainer.set_learning_rates({group: 5e-4 for group in config_lib.GROUPS})
    path = trainer.checkpoint().save(str(tmp_path / "ckpt"))
    restored = trainer_lib.Trainer(tiny_config(), NUM_CLASSES)
    restored.checkpoint().restore(path).assert_consumed()

    def every_variable(t):
        variables = [t.step, t.model.variation.seed_generator.state]
        for name in sorted(t.model.networks):
            variables += t.model.networks[name].variables  # trainable and batch-norm statistics
        for name in config_lib.GROUPS:
            variables += t.optimizers[name].variables  # iterations, learning rate, moments
        return variables

    original, loaded = every_variable(trainer), every_variable(restored)
    assert len(original) == len(loaded) > 300
    for a, b in zip(original, loaded):
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()), err_msg=a.name)
    assert float(restored.optimizers["reid_instance_level"].learning_rate) == pytest.approx(5e-4)
    np.testing.assert_allclose(restored.embed(fixed_batch(7)["ir"]), trainer.embed(fixed_batch(7)["ir"]), atol=1e-6)


def test_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    from jsia_tf import train

    cfg = tiny_config(tmp_path)
    phase = config_lib.Phase("v_only", 2, ("variation",))
    train_cfg = config_lib.TrainConfig(phases=(phase,), steps_per_epoch=2, checkpoint_every=1, log_every=1,
                                       image_every=0)
    t = trainer_lib.Trainer(cfg, NUM_CLASSES)
    manager = tf.train.CheckpointManager(t.checkpoint(), str(tmp_path / "checkpoints"), max_to_keep=5)
    writer = tf.summary.create_file_writer(str(tmp_path))
    good = [(fixed_batch(8), fixed_batch(9))] * 2
    bad = [(fixed_batch(8), fixed_batch(9, nan=True))]
    with pytest.raises(trainer_lib.NonFiniteLossError, match=r"step 3: non-finite .*loss/variation"):
        train.run_training(t, iter(good + bad), train_cfg, manager, writer, cfg.data)
    assert manager.latest_checkpoint.endswith("ckpt-2")
    assert tf.train.load_variable(manager.latest_checkpoint, "step/.ATTRIBUTES/VARIABLE_VALUE") == 2


def test_mixed_bfloat16_losses_are_finite_float32_and_steps_lower_them(mixed_bfloat16, eager):
    """bfloat16 is what makes the joint step twice as fast as the official code on CPUs
    with AVX512-BF16 (docs/BENCHMARKS.md): its steps must still learn."""
    t = trainer_lib.Trainer(tiny_config(sl="gan"), NUM_CLASSES)  # every term, the modality GAN's too
    assert t.model.alignment.set_level_encoder.compute_dtype == "bfloat16"
    assert t.model.generators["rgb"].decoder.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for group in t.groups.values() for v in group)
    values = t.compute_losses(fixed_batch(10), fixed_batch(11))
    assert set(values) == set(routing.TERM_ROUTES)
    for term, value in values.items():
        assert value.dtype == tf.float32 and np.isfinite(value.numpy()), term
    assert t.embed(fixed_batch(12)["rgb"]).dtype == np.float32
    _, joint = t.config.train.phases
    history = [t.train_step(joint, fixed_batch(30), fixed_batch(31)) for _ in range(4)]
    for scalars in history:
        trainer_lib.check_finite({k: float(v) for k, v in scalars.items()}, 1)
        assert all(float(scalars[f"grad_norm/{group}"]) > 0 for group in config_lib.GROUPS)
    first, last = history[0], history[-1]
    for term in ("recon", "id_cls", "total"):
        assert float(last[f"loss/{term}"]) < float(first[f"loss/{term}"]), term


def test_schedule_phases_and_learning_rate_decay():
    train = config_lib.TrainConfig(phases=config_lib.paper_phases(2, 3, (1, 2)), steps_per_epoch=10, lr=1.0,
                                   gan_lr=2.0)
    assert train.total_steps == 50
    assert [train.phase_at(s)[0].name for s in (0, 19, 20, 49)] == ["pretrain_g", "pretrain_g", "joint", "joint"]
    assert train.phase_at(35) == (train.phases[1], 1)
    # lr x 0.1 at joint epochs 1 and 2; the pre-training phase is not decayed.
    rates = [train.learning_rates_at(s) for s in (0, 19, 29, 30, 40)]
    assert [r["reid_set_level"] for r in rates] == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.01])
    assert [r["reid_instance_level"] for r in rates] == [r["reid_set_level"] for r in rates]
    assert [r["generation"] for r in rates] == pytest.approx([2.0, 2.0, 2.0, 0.2, 0.02])
    assert all(r["discriminators"] == r["variation"] == r["generation"] for r in rates)
    with pytest.raises(ValueError, match="outside"):
        train.phase_at(50)
    with pytest.raises(config_lib.ConfigError, match="--pretrain_epochs=-1"):
        config_lib.paper_phases(-1, 1)


def test_generation_every_k_joint_steps_and_module_f_on_the_others(trainer, eager):
    """--generation_every=3: pre-training steps are all G's; of the joint steps, every third
    (global step % 3 == 0) is the whole joint step, the others step module F's groups with
    its identity terms alone and leave G, V and the discriminators as they were."""
    train = config_lib.TrainConfig(phases=config_lib.paper_phases(1, 2, ()), steps_per_epoch=4, generation_every=3)
    pretrain, joint = train.phases
    assert [train.step_phase(s) for s in range(4)] == [pretrain] * 4
    f_only = dataclasses.replace(joint, groups=config_lib.REID_GROUPS, objectives=("reid",))
    assert [train.step_phase(s) for s in range(4, 12)] == [f_only, f_only, joint, f_only, f_only, joint, f_only,
                                                          f_only]
    assert config_lib.TrainConfig(phases=train.phases, steps_per_epoch=4).step_phase(5) == joint  # 1: the paper
    with pytest.raises(config_lib.ConfigError, match="--generation_every=0"):
        config_lib.TrainConfig(generation_every=0)
    assert train_lib.images_per_step(f_only, trainer.config.data) == 2 * 2 * 2  # the re-ID batch alone
    assert set(trainer.terms_for(f_only.groups, f_only.objectives)) == {"id_cls", "id_triplet", "local_id"}
    before = {name: _values(group) for name, group in trainer.groups.items()}
    scalars = trainer.train_step(f_only, fixed_batch(5), fixed_batch(6))
    changed = {name for name, group in trainer.groups.items()
               if any(np.any(b != a) for b, a in zip(before[name], _values(group)))}
    assert changed == set(config_lib.REID_GROUPS)
    assert {n for n in scalars if n.startswith("loss/")} == {"loss/id_cls", "loss/id_triplet", "loss/local_id",
                                                             "loss/total"}


# Table 3 ablations (Sec. 4.4) -------------------------------------------------------------

def test_table3_flags_reject_bad_values():
    with pytest.raises(config_lib.ConfigError, match="--local='sideways'"):
        config_lib.LossConfig(local="sideways")
    with pytest.raises(config_lib.ConfigError, match="--sl='cmgan'"):
        config_lib.ModelConfig(sl="cmgan")
    with pytest.raises(config_lib.ConfigError, match="--lambda_modality=-1.0"):
        config_lib.LossConfig(lambda_modality=-1.0)


def test_switched_off_terms_are_not_computed(eager):
    """Table 3 index 4 (SL and IL only: --local=off --num_regions=0 --ui=false) and index 2
    (--il=false too); --local=off with local regions keeps their identity loss (local_id)."""
    t = trainer_lib.Trainer(tiny_config(loss={"local": "off", "ui": False}, num_regions=0),
                            NUM_CLASSES)
    _, joint = t.config.train.phases
    kept = {"recon", "cycle", "gan", "code", "discriminator", "variation", "id_cls", "id_triplet", "il"}
    assert set(t.compute_losses(fixed_batch(20), fixed_batch(21))) == kept
    scalars = t.train_step(joint, fixed_batch(20), fixed_batch(21))
    assert {name for name in scalars if name.startswith("loss/")} == {f"loss/{term}" for term in kept} | {
        "loss/generator_total", "loss/total"}
    for term in ("local", "ui"):
        with pytest.raises(ValueError, match=f"'{term}'.*not computed in this configuration"):
            t.compute_losses(fixed_batch(20), fixed_batch(21), terms=[term])
    no_il = trainer_lib.Trainer(tiny_config(loss={"il": False, "local": "off",
                                                  "ui": False}, num_regions=0), NUM_CLASSES)
    assert set(no_il.compute_losses(fixed_batch(20), fixed_batch(21))) == kept - {"il"}
    stripes = trainer_lib.Trainer(tiny_config(loss={"local": "off", "ui": False}),
                                  NUM_CLASSES)
    assert set(stripes.compute_losses(fixed_batch(20), fixed_batch(21))) == kept | {"local_id"}


def test_unpaired_local_alignment_compares_the_real_images_of_each_person():
    """--local=unpaired (Table 3 index 8): Eq. 12 between gan_batch rgb[i] and ir[i]
    (same person, different images), no generated image; it trains only module F."""
    t = trainer_lib.Trainer(tiny_config(loss={"local": "unpaired"}), NUM_CLASSES)
    reid_batch, gan_batch = fixed_batch(22), fixed_batch(23)
    with tf.GradientTape(persistent=True) as tape:
        value = t.compute_losses(reid_batch, gan_batch, terms=["local"])["local"]
    # Both modalities in one batch-norm batch (modality_bn="joint").
    real = t.model.per_modality(lambda x: t.model.alignment(x, training=True)["local_logits"], gan_batch["rgb"],
                                gan_batch["ir"])
    expected = np.mean(losses.unpaired_local_alignment_loss(real["ir"], real["rgb"]).numpy())
    assert float(value) == pytest.approx(expected, rel=1e-5) and float(value) > 0
    assert _reached(tape, value, t.groups) == {"reid_set_level", "reid_instance_level"}


@pytest.fixture(scope="module")
def gan_trainer():
    """--sl=gan (Table 3 index 7), lambda_modality 0.5."""
    return trainer_lib.Trainer(tiny_config(loss={"lambda_modality": 0.5}, sl="gan"), NUM_CLASSES)


def test_modality_gan_builds_its_discriminator_only_with_sl_gan(trainer, gan_trainer):
    t = gan_trainer
    assert trainer.model.modality_discriminator is None
    assert t.terms == tuple(routing.TERM_ROUTES)
    # E^sl is not E^i (as --sl=separate); the modality discriminator is a discriminator.
    assert t.model.content_encoder is not t.model.alignment.set_level_encoder
    assert set(t.model.networks) == set(trainer.model.networks) | {"content_encoder", "modality_discriminator"}
    own = {id(v) for v in t.model.modality_discriminator.trainable_variables}
    assert own and own <= {id(v) for v in t.groups["discriminators"]}
    assert len(t.groups["discriminators"]) == len(trainer.groups["discriminators"]) + len(own)
    pretrain, joint = t.config.train.phases
    assert "modality_discriminator" in t.terms_for(pretrain.groups)
    assert "modality_adversarial" not in t.terms_for(pretrain.groups)
    # Each side's objective holds only its own term: D never sees the adversarial term.
    objectives = routing.objectives({term: tf.constant(1.0) for term in t.terms_for(joint.groups)}, t.term_weights,
                                    joint.groups)
    # lambda_modality x the adversarial term
    assert float(objectives[(("reid_set_level",), "modality_adversarial")]) == pytest.approx(0.5)
    # discriminator + modality_discriminator
    assert float(objectives[(("discriminators",), "discriminator")]) == pytest.approx(2.0)


def test_modality_terms_reach_exactly_their_groups(gan_trainer):
    """The discriminator term steps only the modality discriminator (stopped features);
    the adversarial term reaches E^sl and reads (never steps) the discriminator."""
    t = gan_trainer
    terms = ["modality_discriminator", "modality_adversarial"]
    with tf.GradientTape(persistent=True) as tape:
        values = t.compute_losses(fixed_batch(24), fixed_batch(25), terms=terms)
    assert set(values) == set(terms)
    assert _reached(tape, values["modality_discriminator"], t.groups) == {"discriminators"}
    assert _reached(tape, values["modality_adversarial"], t.groups) == {"reid_set_level", "discriminators"}
    image_discriminators = {"image": [v for d in t.model.discriminators.values() for v in d.trainable_variables]}
    assert not _reached(tape, values["modality_discriminator"], image_discriminators)
    # Initial scores are near 0: RGB (0 - 1)^2 and IR 0^2 average to about 1/2; (0 - 1/2)^2 = 1/4.
    assert float(values["modality_discriminator"]) == pytest.approx(0.5, abs=0.2)
    assert float(values["modality_adversarial"]) == pytest.approx(0.25, abs=0.15)


def test_modality_gan_joint_step_updates_the_modality_discriminator(gan_trainer, eager):
    t = gan_trainer
    _, joint = t.config.train.phases
    before_d = _values(t.model.modality_discriminator.trainable_variables)
    before_sl = _values(t.groups["reid_set_level"])
    scalars = t.train_step(joint, fixed_batch(26), fixed_batch(27))
    assert {"loss/modality_discriminator", "loss/modality_adversarial"} <= set(scalars)
    trainer_lib.check_finite({k: float(v) for k, v in scalars.items()}, 1)
    for before, variables in ((before_d, t.model.modality_discriminator.trainable_variables),
                              (before_sl, t.groups["reid_set_level"])):
        assert all(np.any(b != a) for b, a in zip(before, _values(variables)) if b.ndim > 1)  # every kernel moved


# mixed_float16: dynamic loss scaling -------------------------------------------------------

def test_mixed_float16_steps_are_finite_and_lower_the_losses(mixed_float16, eager):
    t = trainer_lib.Trainer(tiny_config(mixed_precision="mixed_float16"), NUM_CLASSES)
    assert t.model.alignment.set_level_encoder.compute_dtype == "float16"
    assert all(isinstance(o, keras.optimizers.LossScaleOptimizer) for o in t.optimizers.values())
    # Keras' initial 2^15 can overflow these gradients for a few steps (each skipped, see the
    # next test); at 2^4 every step updates every group.
    for optimizer in t.optimizers.values():
        optimizer.dynamic_scale.assign(16.0)
    _, joint = t.config.train.phases
    history = [t.train_step(joint, fixed_batch(30), fixed_batch(31)) for _ in range(4)]
    for scalars in history:
        assert all(v.dtype == tf.float32 for v in scalars.values())
        trainer_lib.check_finite({k: float(v) for k, v in scalars.items()}, 1)
        for group in config_lib.GROUPS:
            assert float(scalars[f"loss_scale/{group}"]) == 16.0 and float(scalars[f"grad_norm/{group}"]) > 0
    first, last = history[0], history[-1]
    assert float(last["loss/recon"]) < float(first["loss/recon"])
    assert float(last["loss/id_cls"]) < float(first["loss/id_cls"])
    assert float(last["loss/total"]) < float(first["loss/total"])


def test_mixed_float16_overflow_skips_the_update_and_halves_the_scale(mixed_float16, eager):
    t = trainer_lib.Trainer(tiny_config(mixed_precision="mixed_float16"), NUM_CLASSES)
    _, joint = t.config.train.phases
    for optimizer in t.optimizers.values():
        optimizer.dynamic_scale.assign(2.0 ** 100)  # scaled gradients overflow float16
    before = {name: _values(group) for name, group in t.groups.items()}
    scalars = t.train_step(joint, fixed_batch(32), fixed_batch(33))
    trainer_lib.check_finite({k: float(v) for k, v in scalars.items()}, 1)  # a skipped step is not an error
    for name, group in t.groups.items():
        for b, a in zip(before[name], _values(group)):
            np.testing.assert_array_equal(b, a, err_msg=name)
        assert float(t.optimizers[name].dynamic_scale) == 2.0 ** 99, name
        assert int(t.optimizers[name].iterations) == 0, name
        assert float(scalars[f"grad_norm/{name}"]) == 0.0 and float(scalars[f"loss_scale/{name}"]) == 2.0 ** 100
    # A non-finite LOSS still stops training.
    scalars = t.train_step(config_lib.Phase("v_only", 1, ("variation",)), fixed_batch(34), fixed_batch(35, nan=True))
    with pytest.raises(trainer_lib.NonFiniteLossError, match="loss/variation"):
        trainer_lib.check_finite({k: float(v) for k, v in scalars.items()}, 2)


# -- the learning path (issue: both modalities in one BN batch, generated images and the
#    moving statistics, trained local classifiers, per-group optimizers, F alone) --------


@pytest.mark.parametrize("modality_bn", ["joint", "separate"])
def test_reid_batch_is_normalised_as_configured(modality_bn):
    """joint: Eq. 13's inputs are F's outputs on the concatenated RGB + IR batch (one set of
    batch statistics, as the moving statistics at test); separate: one call per modality."""
    keras.utils.set_random_seed(0)  # the weights, whatever ran before in this process
    t = trainer_lib.Trainer(tiny_config(modality_bn=modality_bn), NUM_CLASSES)
    batch = fixed_batch(40)
    batch["ir"] = batch["ir"] * 0.25 + 30.0  # another modality: other statistics
    value = float(t.compute_losses(batch, fixed_batch(41), terms=["id_cls"])["id_cls"])
    labels = np.concatenate([batch["rgb_labels"], batch["ir_labels"]])
    joint = t.model.alignment(tf.concat([batch["rgb"], batch["ir"]], 0), training=True)["logits"]
    separate = tf.concat([t.model.alignment(batch[m], training=True)["logits"] for m in ("rgb", "ir")], 0)
    logits, other = (joint, separate) if modality_bn == "joint" else (separate, joint)
    expected = losses.label_smoothed_cross_entropy(labels, logits, 0.1).numpy().mean()
    assert value == pytest.approx(float(expected), rel=1e-5)
    # The two conventions differ on these batches: their logits by about their own size (seeds
    # 0-3: 1.0-1.3 x the largest logit; the losses by only ~1e-4, the logits being ~0.01).
    assert np.abs(logits.numpy() - other.numpy()).max() > 0.5 * np.abs(logits.numpy()).max()


@pytest.mark.parametrize("mode, graph", [("restore", False), ("restore", True), ("inference", False),
                                         ("update", False)])
def test_generated_images_and_the_moving_statistics(mode, graph):
    """restore (default): batch statistics in the forward pass, moving statistics unchanged,
    also in a tf.function, where the restore must run after the layers' updates;
    inference: the moving statistics normalise; update (official): they change."""
    t = trainer_lib.Trainer(tiny_config(generated_bn=mode), NUM_CLASSES)
    statistics = t.model._bn_statistics()
    assert statistics and all("moving_" in v.path for v in statistics)
    # Every BN layer of E^sl, E^il and the classifiers holds a mean and a variance.
    assert len(statistics) == 2 * sum(isinstance(layer, keras.layers.BatchNormalization)
                                      for layer in t.model.alignment._flatten_layers())
    images = fixed_batch(42)["rgb"] * 0.5 + 20.0

    def forward(x):
        return t.model.on_generated(lambda training: t.model.alignment(x, training=training)["logits"], training=True)

    before = _values(statistics)
    logits = (tf.function(forward) if graph else forward)(images)
    changed = [np.any(b != a) for b, a in zip(before, _values(statistics))]
    if mode == "update":
        assert all(changed)
    else:
        assert not any(changed)
    reference = t.model.alignment(images, training=mode != "inference")["logits"]  # (updates the statistics)
    np.testing.assert_allclose(logits.numpy(), reference.numpy(), rtol=1e-5, atol=1e-6)
    # Inference-mode callers (summaries, analysis) are never switched to training.
    assert t.model.on_generated(lambda training: training, training=False) is False


def test_local_classifiers_learn_identities_from_their_stripes():
    """Eq. 12's C^k get their own label-smoothed identity loss on the real re-ID stripes (PCB);
    its gradient reaches every C^k, E^il and E^sl, and not C or module G."""
    t = trainer_lib.Trainer(tiny_config(), NUM_CLASSES)
    batch = fixed_batch(43)
    with tf.GradientTape(persistent=True) as tape:
        value = t.compute_losses(batch, fixed_batch(44), terms=["local_id"])["local_id"]
    out = t.model.alignment(tf.concat([batch["rgb"], batch["ir"]], 0), training=True)
    labels = np.concatenate([batch["rgb_labels"], batch["ir_labels"]])
    expected = np.mean([losses.label_smoothed_cross_entropy(labels, logits, 0.1).numpy().mean()
                        for logits in out["local_logits"]])
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    assert t.term_weights["local_id"] == 1.0
    for classifier in t.model.alignment.local_classifiers:
        grad = tape.gradient(value, classifier.dense.kernel)
        assert grad is not None and np.any(grad.numpy() != 0)
    assert tape.gradient(value, t.model.alignment.classifier.dense.kernel) is None
    assert _reached(tape, value, t.groups) == {"reid_set_level", "reid_instance_level"}


def test_local_identity_training_makes_the_local_alignment_matter(eager):
    """Without the identity loss the C^k stay at their initialisation (logits ~0.02), so Eq. 12
    is ~1e-5; four steps with it spread the local logits (and so Eq. 12) several times more."""
    def lr_after(lambda_local_id):
        keras.utils.set_random_seed(0)
        t = trainer_lib.Trainer(tiny_config(loss={"lambda_local_id": lambda_local_id}), NUM_CLASSES)
        _, joint = t.config.train.phases
        for step in range(4):
            t.train_step(joint, fixed_batch(45), fixed_batch(46))
        batch = fixed_batch(45)
        return float(np.std(t.model.alignment(batch["rgb"], training=False)["local_logits"][0].numpy()))

    assert lr_after(1.0) > 2.5 * lr_after(0.0)  # measured: 3.7x


def test_per_group_optimizers_are_in_the_config_and_the_checkpoint(tmp_path):
    cfg = tiny_config()
    train = dataclasses.replace(cfg.train, lr=3e-4, beta1=0.8, weight_decay=2e-3, gan_lr=5e-5, gan_beta1=0.4,
                                gan_weight_decay=7e-4)
    t = trainer_lib.Trainer(dataclasses.replace(cfg, train=train), NUM_CLASSES)
    for group, (lr, beta1, weight_decay) in {"reid_set_level": (3e-4, 0.8, 2e-3),
                                             "reid_instance_level": (3e-4, 0.8, 2e-3),
                                             "generation": (5e-5, 0.4, 7e-4), "discriminators": (5e-5, 0.4, 7e-4),
                                             "variation": (5e-5, 0.4, 7e-4)}.items():
        optimizer = t.optimizers[group]
        assert isinstance(optimizer, keras.optimizers.AdamW)
        assert (float(optimizer.learning_rate), optimizer.beta_1, optimizer.weight_decay) == pytest.approx(
            (lr, beta1, weight_decay))
    config_lib.Config.save(dataclasses.replace(cfg, train=train), tmp_path / "config.json")
    loaded = config_lib.Config.load(tmp_path / "config.json")
    assert loaded.train.optimizer_settings("generation") == (5e-5, 0.4, 0.999, 7e-4)
    path = t.checkpoint().save(str(tmp_path / "ckpt"))
    reader = tf.train.load_checkpoint(path)
    saved = {name.split("/")[0]: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
             if name.startswith("optimizer_settings_")}
    np.testing.assert_allclose(saved["optimizer_settings_reid_set_level"], (3e-4, 0.8, 0.999, 2e-3))
    np.testing.assert_allclose(saved["optimizer_settings_variation"], (5e-5, 0.4, 0.999, 7e-4))
    # Resuming with other settings: the difference is reported, the new settings win.
    other = trainer_lib.Trainer(tiny_config(), NUM_CLASSES)
    other.checkpoint().restore(path).assert_consumed()
    differ = other.restored_settings_differ()
    assert set(differ) == set(config_lib.GROUPS)
    assert differ["generation"] == ((5e-5, 0.4, 0.999, 7e-4), other.config.train.optimizer_settings("generation"))
    assert other.restored_settings_differ() == {}


def test_reid_learning_rate_warms_up_from_the_first_step_that_trains_f():
    train = config_lib.TrainConfig(phases=config_lib.paper_phases(1, 2, ()), steps_per_epoch=10, lr=1.0,
                                   gan_lr=0.5, warmup_steps=4)
    rates = [train.learning_rates_at(s) for s in (0, 9, 10, 11, 13, 14, 29)]
    assert [r["reid_set_level"] for r in rates] == pytest.approx([0.25, 0.25, 0.25, 0.5, 1.0, 1.0, 1.0])
    assert [r["generation"] for r in rates] == pytest.approx([0.5] * 7)  # G is not warmed up
    with pytest.raises(config_lib.ConfigError, match="--warmup_steps=-1"):
        config_lib.TrainConfig(warmup_steps=-1)


def test_gan_learning_rate_warms_up_from_the_first_step():
    train = config_lib.TrainConfig(phases=config_lib.paper_phases(1, 2, ()), steps_per_epoch=10, lr=1.0,
                                   gan_lr=0.5, gan_warmup_steps=4)
    rates = [train.learning_rates_at(s) for s in (0, 1, 3, 4, 10, 29)]
    for group in ("generation", "discriminators", "variation"):
        assert [r[group] for r in rates] == pytest.approx([0.125, 0.25, 0.5, 0.5, 0.5, 0.5])
    assert [r["reid_set_level"] for r in rates] == pytest.approx([1.0] * 6)  # F is not warmed up
    with pytest.raises(config_lib.ConfigError, match="--gan_warmup_steps=-1"):
        config_lib.TrainConfig(gan_warmup_steps=-1)


def test_module_f_alone_steps_only_f(eager):
    """--generation=false (Table 3 row 1 without the cost of G): one phase, F's groups, the
    identity terms only (C^k's too where there are local regions); a term that needs
    generated images is a flag error."""
    cfg = tiny_config(generation=False, loss={"il": False, "local": "off",
                                             "ui": False})
    t = trainer_lib.Trainer(cfg, NUM_CLASSES)
    (phase,) = cfg.train.phases
    assert phase.groups == config_lib.REID_GROUPS
    assert set(t.terms_for(phase.groups)) == {"id_cls", "id_triplet", "local_id"}
    frozen = [v for name in ("generation", "discriminators", "variation") for v in t.groups[name]]
    before = _values(frozen)
    scalars = t.train_step(phase, fixed_batch(47), fixed_batch(48))
    assert {n for n in scalars if n.startswith("loss/")} == {"loss/id_cls", "loss/id_triplet", "loss/local_id",
                                                             "loss/total"}
    for b, a in zip(before, _values(frozen)):
        np.testing.assert_array_equal(b, a)
    with pytest.raises(config_lib.ConfigError,
                       match="--generation=False: expected module F alone, which these flags contradict: --il=True"):
        tiny_config(generation=False, loss={"local": "off", "ui": False})
    with pytest.raises(config_lib.ConfigError, match="--generation=False"):
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, phases=config_lib.paper_phases(1, 1, ())))


# FusedAdamW against Keras' AdamW: 5 steps on the same gradients, on one device and under
# MirroredStrategy over 2 logical CPUs (the slots are mirrored: each device's copy is
# updated through its own handle). Prints {mode: [max |difference| of weights and slots,
# the smallest variable's largest update]}.
_FUSED_ADAM_SCRIPT = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from jsia_tf.trainer import FusedAdamW
rng = np.random.default_rng(0)
init = [rng.normal(size=s).astype(np.float32) for s in [(3, 4), (5,), (2, 2, 3)]]
grads = [[rng.normal(size=x.shape).astype(np.float32) for x in init] for _ in range(5)]
out = {}
for mode, strategy in (("one_device", tf.distribute.get_strategy()),
                       ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    weights, slots = [], []
    for cls in (keras.optimizers.AdamW, FusedAdamW):
        with strategy.scope():
            variables = [keras.Variable(x) for x in init]
            optimizer = cls(learning_rate=1e-2, weight_decay=5e-4, epsilon=1e-8)
            optimizer.build(variables)

        @tf.function
        def step(g):
            strategy.run(lambda: optimizer.apply_gradients(zip([tf.identity(x) for x in g], variables)))

        for g in grads:
            step(g)
        # Every device's copy (a mirrored variable's numpy() shows only the first).
        weights.append([t.numpy() for v in variables for t in strategy.experimental_local_results(v.value)])
        starts = [x for x, v in zip(init, variables) for _ in strategy.experimental_local_results(v.value)]
        slots.append([t.numpy() for m in optimizer._momentums + optimizer._velocities
                      for t in strategy.experimental_local_results(m.value)])
    fused_w = weights[1]
    out[mode] = [max(float(np.abs(a - b).max()) for a, b in list(zip(*weights)) + list(zip(*slots))),
                 min(float(np.abs(a - x).max()) for a, x in zip(fused_w, starts))]
print(json.dumps(out))
"""


def test_fused_adamw_takes_keras_adamw_steps_on_one_device_and_mirrored():
    out = run_script_json(_FUSED_ADAM_SCRIPT)
    for mode in ("one_device", "mirrored"):
        difference, smallest_update = out[mode]
        assert difference < 1e-5 and smallest_update > 1e-2, (mode, out[mode])
