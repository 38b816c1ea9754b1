"""Which loss term updates which variables, and with what loss scale.

The model's loss terms (:func:`jsia_tf.models.jsia.JSIA.losses`, Eqs. 4-16) share
networks: E^i = E^sl reads module G's and module F's terms, the generator's LSGAN
term reads the discriminators. Each term is declared once, in
:data:`jsia_tf.terms.TERMS`: its groups say which variable groups its gradient may
update; a step takes each group's gradient only of the terms routed to it, so the
discriminators never learn from the generator's term and module V never from the re-ID
terms. Nothing here builds a network.
"""

import tensorflow as tf

from jsia_tf import losses
from jsia_tf.terms import TERMS

TERM_ROUTES = {term.name: term.groups for term in TERMS}
TERM_OBJECTIVES = {term.name: term.objective for term in TERMS}
REID_BATCH_TERMS = tuple(term.name for term in TERMS if term.batch == "reid")
GENERATOR_TERMS = tuple(term.name for term in TERMS if term.objective == "generator")  # Eq. 8's L^G


def term_weights(loss_cfg):
    """Term -> its weight in Eq. 8 or Eq. 16 (``config.LossConfig``)."""
    return {term.name: getattr(loss_cfg, term.weight) if term.weight else 1.0 for term in TERMS}


def configured_terms(config):
    """The terms a run's :class:`jsia_tf.config.Config` has, in :data:`TERMS` order."""
    return tuple(term.name for term in TERMS if term.present(config))


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
