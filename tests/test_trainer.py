"""The Trainer at tiny sizes: variable groups, loss routing, steps, checkpoints, the non-finite guard."""

import numpy as np
import pytest
import tensorflow as tf

from jsia_tf import config as config_lib
from jsia_tf import trainer as trainer_lib

NUM_CLASSES = 4
HEIGHT, WIDTH = 32, 16


def tiny_config(run_dir="run", **model_overrides):
    """resnet18 (8, 16, 16, 32) at 32x16, tiny G / V / discriminators, 2 ids x 2 images."""
    model = dict(backbone="resnet18", backbone_weights="none", backbone_widths=(8, 16, 16, 32), num_regions=2,
                 style_dim=8, style_base_width=8, style_max_width=16, mlp_hidden_dim=16, num_res_blocks=1,
                 disc_num_layers=3, disc_base_width=8, variation_hidden_channels=8, variation_latent_channels=4)
    model.update(model_overrides)
    data = config_lib.DataConfig(data_dir="data", height=HEIGHT, width=WIDTH, num_ids=2, num_instances=2,
                                 gan_num_ids=2, gan_num_instances=2)
    # lambda 1 for IL / LR / UI so that their (small at initialisation) gradients are clear.
    loss = config_lib.LossConfig(lambda_il=1.0, lambda_lr=1.0, lambda_ui=1.0)
    train = config_lib.TrainConfig(phases=config_lib.paper_phases(1, 1, ()), steps_per_epoch=2, lr=1e-3)
    return config_lib.Config(run_dir=str(run_dir), data=data, model=config_lib.ModelConfig(**model), loss=loss,
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


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


@pytest.fixture(scope="module")
def trainer():
    return trainer_lib.Trainer(tiny_config(), NUM_CLASSES)


def test_groups_are_disjoint_and_cover_every_trainable_variable(trainer):
    assert set(trainer.groups) == set(config_lib.GROUPS)
    ids = [id(v) for group in trainer.groups.values() for v in group]
    assert len(ids) == len(set(ids))
    everything = {id(v) for model in trainer.models.values() for v in model.trainable_variables}
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
    assert trainer.content_encoder is trainer.alignment.set_level_encoder
    assert "content_encoder" not in trainer.models
    set_level = {id(v) for v in trainer.alignment.set_level_encoder.trainable_variables}
    assert set_level == {id(v) for v in trainer.groups["reid_set_level"]}
    images = fixed_batch(0)["rgb"]
    np.testing.assert_array_equal(trainer.content(images, training=False),
                                  trainer.alignment.set_level(images, training=False))


def test_separate_set_level_encoder_belongs_to_generation():
    """The ablation without SL (Table 3): E^i is its own copy of the stem, stepped with module G."""
    separate = trainer_lib.Trainer(tiny_config(set_level="separate"), NUM_CLASSES)
    assert separate.content_encoder is not separate.alignment.set_level_encoder
    generation = {id(v) for v in separate.groups["generation"]}
    assert {id(v) for v in separate.content_encoder.trainable_variables} <= generation
    assert not generation & {id(v) for v in separate.groups["reid_set_level"]}


def test_each_loss_reaches_exactly_its_groups(trainer):
    """ROUTING: the gradient of every term is non-zero on its routed groups and nowhere else,
    except the generator's LSGAN term, which reads (never steps) the discriminators."""
    reid_batch, gan_batch = fixed_batch(1), fixed_batch(2)
    variables = {name: group for name, group in trainer.groups.items()}
    with tf.GradientTape(persistent=True) as tape:
        values = trainer.compute_losses(reid_batch, gan_batch)
    assert set(values) == set(trainer_lib.TERM_ROUTES)
    for term, value in values.items():
        assert np.isfinite(value.numpy()), term
        reached = set()
        for name, group in variables.items():
            grads = tape.gradient(value, group)
            if any(g is not None and np.any(g.numpy() != 0) for g in grads):
                reached.add(name)
        expected = set(trainer_lib.TERM_ROUTES[term]) | ({"discriminators"} if term == "gan" else set())
        assert reached == expected, term


def test_pretrain_phase_leaves_the_reid_encoders_out(trainer):
    pretrain, joint = trainer.config.train.phases
    assert set(trainer.terms_for(pretrain.groups)) == {"recon", "cycle", "gan", "discriminator", "variation"}
    assert set(trainer.terms_for(joint.groups)) == set(trainer_lib.TERM_ROUTES)
    # An objective holds only terms routed to its groups; reid_set_level is not stepped in pretraining.
    values = {term: tf.constant(1.0) for term in trainer.terms_for(pretrain.groups)}
    objectives = trainer.objectives(values, pretrain.groups)
    assert set(objectives) == {("generation",), ("discriminators",), ("variation",)}
    assert float(objectives[("generation",)]) == pytest.approx(1.0 + 10.0 + 1.0)  # recon + lambda_cyc + lambda_gan


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
    assert {f"loss/{t}" for t in trainer_lib.TERM_ROUTES} <= set(first)
    assert {f"grad_norm/{g}" for g in config_lib.GROUPS} <= set(first)
    assert all(float(first[f"grad_norm/{g}"]) > 0 for g in config_lib.GROUPS)
    id_loss = [float(s["loss/id_cls"]) + float(s["loss/id_triplet"]) for s in (first, last)]
    assert id_loss[1] < id_loss[0]
    assert float(last["loss/recon"]) < float(first["loss/recon"])


def test_checkpoint_restores_every_variable(trainer, tmp_path):
    trainer.set_learning_rate(5e-4)
    path = trainer.checkpoint().save(str(tmp_path / "ckpt"))
    restored = trainer_lib.Trainer(tiny_config(), NUM_CLASSES)
    restored.checkpoint().restore(path).assert_consumed()

    def every_variable(t):
        variables = [t.step, t.variation.seed_generator.state]
        for name in sorted(t.models):
            variables += t.models[name].variables  # trainable and batch-norm statistics
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


def test_mixed_bfloat16_losses_are_finite_float32(mixed_bfloat16):
    t = trainer_lib.Trainer(tiny_config(), NUM_CLASSES)
    assert t.alignment.set_level_encoder.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for group in t.groups.values() for v in group)
    values = t.compute_losses(fixed_batch(10), fixed_batch(11))
    assert set(values) == set(trainer_lib.TERM_ROUTES)
    for term, value in values.items():
        assert value.dtype == tf.float32 and np.isfinite(value.numpy()), term
    assert t.embed(fixed_batch(12)["rgb"]).dtype == np.float32


def test_schedule_phases_and_learning_rate_decay():
    train = config_lib.TrainConfig(phases=config_lib.paper_phases(2, 3, (1, 2)), steps_per_epoch=10, lr=1.0)
    assert train.total_steps == 50
    assert [train.phase_at(s)[0].name for s in (0, 19, 20, 49)] == ["pretrain_g", "pretrain_g", "joint", "joint"]
    assert train.phase_at(35) == (train.phases[1], 1)
    # lr x 0.1 at joint epochs 1 and 2; the pre-training phase is not decayed.
    assert [train.learning_rate_at(s) for s in (0, 19, 29, 30, 40)] == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.01])
    with pytest.raises(ValueError, match="outside"):
        train.phase_at(50)
    with pytest.raises(config_lib.ConfigError, match="--pretrain_epochs=-1"):
        config_lib.paper_phases(-1, 1)
