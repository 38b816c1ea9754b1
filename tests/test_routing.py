"""Loss routing without networks: which terms a configuration and a phase compute, the
objectives, per-group gradients against hand-computed ones, and the loss-scale ratios."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from jsia_tf import config as config_lib
from jsia_tf import routing
from jsia_tf import terms as terms_lib

MODALITY_TERMS = {"modality_discriminator", "modality_adversarial"}
# The terms of the default configuration: not the modality GAN's (--sl=gan), nor the
# official code's re-encoded codes (--lambda_code=0).
ALL_BUT_MODALITY = tuple(t for t in routing.TERM_ROUTES if t not in MODALITY_TERMS | {"code"})
GENERATION_TERMS = {"recon", "cycle", "gan", "discriminator", "variation"}


def _config(loss=None, **model):
    model = config_lib.ModelConfig(**model)
    train = config_lib.TrainConfig(phases=config_lib.paper_phases(generation=model.generation))
    return config_lib.Config(run_dir="run", data=config_lib.DataConfig(data_dir="data"),
                             loss=config_lib.LossConfig(**(loss or {})), model=model, train=train)


def test_every_term_has_a_route_an_objective_and_a_weight():
    weights = routing.term_weights(config_lib.LossConfig())
    assert set(routing.TERM_ROUTES) == set(routing.TERM_OBJECTIVES) == set(weights)
    assert all(set(route) <= set(config_lib.GROUPS) for route in routing.TERM_ROUTES.values())
    assert set(routing.REID_BATCH_TERMS) < set(routing.TERM_ROUTES)
    weights = routing.term_weights(config_lib.LossConfig(lambda_cyc=3.0, lambda_ui=0.5))
    assert (weights["cycle"], weights["ui"], weights["id_cls"]) == (3.0, 0.5, 1.0)


@pytest.mark.parametrize("loss, model, absent", [
    ({}, {}, set()),
    ({"il": False}, {}, {"il"}),  # --il=false
    ({"ui": False}, {}, {"ui"}),  # --ui=false
    ({"local": "off"}, {}, {"local"}),  # --local=off: no Eq. 12, the C^k still learn identities
    ({"local": "unpaired"}, {}, set()),  # --local=unpaired: Eq. 12 still computed
    ({}, {"num_regions": 0}, {"local", "local_id"}),  # no local classifiers
    ({}, {"sl": "separate"}, set()),
])
def test_table3_switches_decide_the_terms(loss, model, absent):
    cfg = _config(loss, **model)
    terms = routing.configured_terms(cfg)
    assert terms == tuple(term for term in ALL_BUT_MODALITY if term not in absent)
    weights = routing.term_weights(cfg.loss)
    assert routing.terms_for(terms, weights, config_lib.GROUPS) == terms
    assert set(routing.terms_for(terms, weights, config_lib.PRETRAIN_GROUPS)) == GENERATION_TERMS


def test_the_re_encoded_codes_term_is_computed_with_a_weight_only():
    """--lambda_code (the official code's MUNIT term): 0 leaves Eq. 8 as the paper writes it."""
    assert "code" not in routing.configured_terms(_config())
    cfg = _config({"lambda_code": 0.5})
    terms = routing.configured_terms(cfg)
    weights = routing.term_weights(cfg.loss)
    assert weights["code"] == 0.5 and routing.TERM_OBJECTIVES["code"] == "generator"
    assert set(routing.terms_for(terms, weights, config_lib.PRETRAIN_GROUPS)) == GENERATION_TERMS | {"code"}
    alone = _config({"lambda_code": 0.5, "il": False, "local": "off", "ui": False}, generation=False)
    assert "code" not in routing.configured_terms(alone)


def test_modality_gan_and_module_f_alone_terms():
    gan = _config(sl="gan")
    assert routing.configured_terms(gan) == tuple(t for t in routing.TERM_ROUTES if t != "code")
    pretrain = routing.terms_for(routing.configured_terms(gan), routing.term_weights(gan.loss),
                                 config_lib.PRETRAIN_GROUPS)
    assert "modality_discriminator" in pretrain and "modality_adversarial" not in pretrain
    alone = _config({"il": False, "local": "unpaired", "ui": False},
                    generation=False)
    assert routing.configured_terms(alone) == ("id_cls", "id_triplet", "local_id", "local")
    # A zero weight drops the term from the phase (nothing to differentiate).
    assert routing.terms_for(("id_cls", "local"), {"id_cls": 1.0, "local": 0.0}, config_lib.GROUPS) == ("id_cls",)


def test_objectives_group_terms_by_stepped_route_and_objective():
    values = {"recon": tf.constant(2.0), "cycle": tf.constant(3.0), "discriminator": tf.constant(5.0),
              "id_cls": tf.constant(7.0), "il": tf.constant(11.0)}
    weights = {"recon": 1.0, "cycle": 10.0, "discriminator": 1.0, "id_cls": 1.0, "il": 0.5}
    out = routing.objectives(values, weights, config_lib.GROUPS)
    assert {key: float(v) for key, v in out.items()} == {
        (("generation", "reid_set_level"), "generator"): 2.0 + 30.0,
        (("discriminators",), "discriminator"): 5.0,
        (("reid_set_level", "reid_instance_level"), "reid"): 7.0,
        (("reid_set_level", "reid_instance_level"), "alignment"): 5.5}
    # Pre-training steps neither re-ID group: the re-ID terms have no objective, L^G steps G only.
    out = routing.objectives(values, weights, config_lib.PRETRAIN_GROUPS)
    assert set(out) == {(("generation",), "generator"), (("discriminators",), "discriminator")}
    scaled = routing.objectives(values, weights, config_lib.GROUPS,
                                {"generation": 8.0, "reid_set_level": 2.0, "reid_instance_level": 4.0,
                                 "discriminators": 16.0, "variation": 1.0})
    assert float(scaled[(("generation", "reid_set_level"), "generator")]) == 2.0 * 32.0  # the smaller scale
    assert float(scaled[(("discriminators",), "discriminator")]) == 16.0 * 5.0


def _two_term_step(scales=None):
    """recon = a * s (G and E^sl), id_cls = s * c^2 (E^sl and E^il), discriminator = d; u unreached."""
    a, s, c, d, u = (tf.Variable(x) for x in (2.0, 3.0, 5.0, 7.0, 1.0))
    variables = {"generation": [a], "reid_set_level": [s], "reid_instance_level": [c, u], "discriminators": [d]}
    weights = {"recon": 10.0, "id_cls": 1.0, "discriminator": 1.0}
    with tf.GradientTape(persistent=True) as tape:
        values = {"recon": a * s, "id_cls": s * c * c, "discriminator": d * d}
        objectives = routing.objectives(values, weights, tuple(variables), scales)
    grads, stem_norms = routing.gradients(tape, objectives, variables, scales)
    return {name: [float(g) for g in group] for name, group in grads.items()}, stem_norms


def test_each_group_gets_the_gradient_of_only_its_terms():
    grads, stem_norms = _two_term_step()
    # d(10 a s)/da = 10 s; E^sl: 10 a + c^2; E^il: 2 s c, and 0 for the variable no term reaches.
    assert grads == {"generation": [30.0], "reid_set_level": [20.0 + 25.0], "reid_instance_level": [30.0, 0.0],
                     "discriminators": [14.0]}
    assert {k: float(v) for k, v in stem_norms.items()} == {"generator": 20.0, "reid": 25.0}


def test_loss_scales_bring_each_group_to_its_own_scale():
    """An objective spanning two groups is scaled by the smaller scale; each group's part is
    then multiplied by (its scale / that scale), a power of 2, so its optimizer can unscale
    by its own scale; the E^sl norms are reported unscaled."""
    scales = {"generation": tf.constant(8.0), "reid_set_level": tf.constant(2.0),
              "reid_instance_level": tf.constant(32.0), "discriminators": tf.constant(4.0)}
    grads, stem_norms = _two_term_step(scales)
    plain, plain_norms = _two_term_step()
    for name, group in grads.items():
        np.testing.assert_array_equal(group, [float(scales[name]) * g for g in plain[name]], err_msg=name)
    assert {k: float(v) for k, v in stem_norms.items()} == {k: float(v) for k, v in plain_norms.items()}


def test_totals_are_eq8_and_eq16():
    values = {"recon": tf.constant(1.0), "cycle": tf.constant(2.0), "id_cls": tf.constant(4.0)}
    weights = {"recon": 1.0, "cycle": 10.0, "id_cls": 1.0}
    out = {k: float(v) for k, v in routing.totals(values, weights).items()}
    assert out == {"loss/generator_total": 21.0, "loss/total": 25.0}
    assert set(routing.totals({"id_cls": tf.constant(4.0)}, weights)) == {"loss/total"}


def test_each_term_is_declared_once_with_a_weight_field_of_the_loss_config():
    names = [term.name for term in terms_lib.TERMS]
    assert len(names) == len(set(names))
    fields = {field.name for field in dataclasses.fields(config_lib.LossConfig)}
    assert all(term.weight in fields for term in terms_lib.TERMS if term.weight)
    assert {term.batch for term in terms_lib.TERMS} == {"generation", "reid"}
    assert {term.objective for term in terms_lib.TERMS} == set(config_lib.OBJECTIVES)


def test_module_f_alone_reads_the_switches_of_the_terms():
    """--generation=false implies each switch's value for module F alone, and that value
    has none of the terms that need module G."""
    switches = {term.switch for term in terms_lib.TERMS if term.switch}
    assert {s.flag for s in switches} == {"il", "local", "ui", "sl"}
    assert config_lib.MODULE_F_ALONE == {"il": False, "local": "off", "ui": False}
    alone = _config(config_lib.MODULE_F_ALONE, generation=False)
    assert all(alone.value_of(s.flag) != s.needs_g for s in switches)
