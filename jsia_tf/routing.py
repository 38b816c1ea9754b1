"""Which loss term updates which variables, and with what loss scale.

The model's loss terms (:func:`jsia_tf.models.jsia.JSIA.losses`, Eqs. 4-16) share
networks: E^i = E^sl reads module G's and module F's terms, the generator's LSGAN
term reads the discriminators. :data:`TERM_ROUTES` says which variable groups each
term's gradient may update; a step takes each group's gradient only of the terms routed
to it, so the discriminators never learn from the generator's term and module V never
from the re-ID terms. Nothing here builds a network.
"""

import tensorflow as tf

from jsia_tf import losses

_GENERATION_ROUTE = ("generation", "reid_set_level")
_REID_ROUTE = ("reid_set_level", "reid_instance_level")
# Loss term -> the variable groups (config.GROUPS) its gradient updates.
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
    "local": _REID_ROUTE,  # Eq. 12 on (real, DETACHED generated)
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
                   "il": "alignment", "local": "alignment", "ui": "alignment",
                   "modality_discriminator": "discriminator", "modality_adversarial": "modality_adversarial"}
# Terms of module G's objective L^G (Eq. 8).
GENERATOR_TERMS = ("recon", "cycle", "gan")


def term_weights(loss_cfg):
    """Term -> its weight in Eq. 8 or Eq. 16 (``config.LossConfig``)."""
    c = loss_cfg
    return {"recon": c.lambda_recon, "cycle": c.lambda_cyc, "gan": c.lambda_gan, "discriminator": 1.0,
            "variation": 1.0, "id_cls": 1.0, "id_triplet": 1.0, "local_id": c.lambda_local_id, "il": c.lambda_il,
            "local": c.lambda_local, "ui": c.lambda_ui, "modality_discriminator": 1.0,
            "modality_adversarial": c.lambda_modality}


def configured_terms(config):
    """The terms a run's :class:`jsia_tf.config.Config` has (Table 3's switches), in
    :data:`TERM_ROUTES` order."""
    loss, model = config.loss, config.model
    absent = set()
    if not loss.il:
        absent.add("il")
    if loss.local == "off":
        absent.add("local")  # no Eq. 12; the C^k still learn identities (local_id) unless num_regions is 0
    if not model.num_regions:
        absent.update({"local", "local_id"})  # no local regions: no C^k
    if not loss.ui:
        absent.add("ui")
    if model.sl != "gan":
        absent.update({"modality_discriminator", "modality_adversarial"})
    if not model.generation:  # module F alone: module G's terms reach E^sl, leave them out
        absent.update(("recon", "cycle", "gan", "discriminator", "variation"))
    return tuple(term for term in TERM_ROUTES if term not in absent)


def terms_for(terms, weights, groups, objectives=()):
    """Of ``terms``, those a phase stepping ``groups`` computes: routed to one of them, weight > 0,
    of one of ``objectives`` (:data:`TERM_OBJECTIVES` names; empty: any)."""
    return tuple(term for term in terms if set(TERM_ROUTES[term]) & set(groups) and weights[term] > 0
                 and (not objectives or TERM_OBJECTIVES[term] in objectives))


def route_scale(scales, stepped):
    """The loss scale of an objective whose route steps ``stepped``: the smallest of theirs."""
    return tf.reduce_min(tf.stack([scales[name] for name in stepped]))


def objectives(values, weights, groups, scales=None):
    """The objectives to differentiate: {(stepped groups, objective): weighted sum of terms}.

    Terms with the same route restricted to the stepped ``groups`` and the same
    :data:`TERM_OBJECTIVES` name share one objective, differentiated once. With
    ``scales`` ({group: dynamic loss scale}, ``mixed_float16``) each objective is
    multiplied by the smallest scale of its route. Call inside the tape.
    """
    routes = {}
    for term in values:
        stepped = tuple(g for g in TERM_ROUTES[term] if g in groups)
        if stepped:
            routes.setdefault((stepped, TERM_OBJECTIVES[term]), []).append(term)
    out = {key: losses.weighted_sum({t: values[t] for t in terms}, {t: weights[t] for t in terms})
           for key, terms in routes.items()}
    if scales is None:
        return out
    return {key: objective * route_scale(scales, key[0]) for key, objective in out.items()}


def gradients(tape, objectives_, variables, scales=None):
    """Per stepped group, the gradient of the objectives routed to it.

    Args:
      tape: the persistent tape the objectives were computed under.
      objectives_: :func:`objectives`' output.
      variables: {group: its variables} for every stepped group.
      scales: the scales the objectives were multiplied with, or None.
    Returns:
      (grads, stem_norms). grads: {group: gradients, one per variable}, the sum over
      the objectives whose route holds the group; zeros where no objective reaches a
      variable. With ``scales``
      each group's part is brought from its route's scale to the group's own scale (a
      power-of-two ratio, exact), so a group's gradient is scaled by its own scale and
      its optimizer can unscale it and skip it alone on overflow (PyTorch's GradScaler
      also skips each optimizer's step on its own). stem_norms: {objective: the
      unscaled global norm of its gradient on reid_set_level (E^sl)} for the objectives
      that reach it.
    """
    grads = {name: [None] * len(group) for name, group in variables.items()}
    stem_norms = {}
    for (stepped, objective_name), objective in objectives_.items():
        flat = tape.gradient(objective, [v for name in stepped for v in variables[name]])
        start = 0
        for name in stepped:
            part = flat[start:start + len(variables[name])]
            start += len(variables[name])
            if name == "reid_set_level":
                norm = tf.linalg.global_norm([g for g in part if g is not None] or [tf.zeros([])])
                stem_norms[objective_name] = norm if scales is None else norm / route_scale(scales, stepped)
            if scales is not None:
                ratio = scales[name] / route_scale(scales, stepped)  # a power of 2, >= 1
                part = [None if g is None else g * ratio for g in part]
            grads[name] = [b if a is None else (a if b is None else a + b) for a, b in zip(grads[name], part)]
    return {name: [tf.zeros_like(v) if g is None else g for g, v in zip(grads[name], variables[name])]
            for name in variables}, stem_norms


def totals(values, weights):
    """Eq. 8's L^G ("loss/generator_total", when a term of it is computed) and Eq. 16's
    weighted sum of every computed term ("loss/total")."""
    out = {}
    generator = {t: values[t] for t in GENERATOR_TERMS if t in values}
    if generator:
        out["loss/generator_total"] = losses.weighted_sum(generator, {t: weights[t] for t in generator})
    out["loss/total"] = losses.weighted_sum(values, {t: weights[t] for t in values})
    return out
