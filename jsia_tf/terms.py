"""The declaration of each loss term of Eqs. 4-16: one entry per term in :data:`TERMS`.

Routing (:mod:`jsia_tf.routing`), config validation (:class:`jsia_tf.config.Config`),
the weights and TensorBoard's ``loss/<name>`` read it; the formulas are in
:meth:`jsia_tf.models.jsia.JSIA.losses`. A leaf module of plain data, so that the config,
which imports no TensorFlow, can validate against it.
"""

import dataclasses
import typing


@dataclasses.dataclass(frozen=True)
class Switch:
    """The option (field and flag of one spelling) that turns a term on, and what module F
    alone (``--generation=false``, Table 3 row 1) makes of it.

    Attributes:
      flag: the option.
      needs_g: the value at which the term reads module G's images; with
        ``--generation=false`` that value is a flag error.
      expected: what the error says the flag should be instead.
      alone: the value ``--generation=false`` implies unless the flag is given (None: none).
    """

    flag: str
    needs_g: object
    expected: str
    alone: object = None


@dataclasses.dataclass(frozen=True)
class Term:
    """One loss term: all that the routing, the weights, the switches and TensorBoard
    (``loss/<name>``) know of it.

    Attributes:
      name: its key in ``JSIA.losses``' output.
      equation: the paper's equation (or the source) and what it reads.
      batch: "generation" (module G's outputs on the generation batch) or "reid".
      groups: the variable groups (``config.GROUPS``) its gradient may update.
      objective: terms of one route and one objective are differentiated together, so
        that the gradient each objective sends into the shared stem E^sl is reported
        ("grad_norm/reid_set_level/<objective>"); "generator" is Eq. 8's L^G.
      weight: its ``config.LossConfig`` weight field in Eq. 8 or Eq. 16 (None: 1).
      present: whether a run's :class:`jsia_tf.config.Config` has it (Table 3's switches).
      switch: the option that can make it need module G (None: it needs G always or never).
    """

    name: str
    equation: str
    batch: str
    groups: tuple
    objective: str
    weight: str | None
    present: typing.Callable
    switch: Switch | None = None


_GENERATION_ROUTE = ("generation", "reid_set_level")
_REID_ROUTE = ("reid_set_level", "reid_instance_level")
_NO_PAIRS = "no generated pairs without module G"
# --sl=gan: a separate E^i, which only module G trains, beside a modality-adversarial E^sl.
_SL_GAN = Switch("sl", "gan", "'shared' or 'separate' without module G")


def _with_g(config):  # module F alone: module G's terms would reach E^sl, leave them out
    return config.model.generation


def _always(config):
    del config
    return True


def _modality_gan(config):
    return config.model.sl == "gan"


TERMS = (
    Term("recon", "Eq. 4, L1 self-reconstruction", "generation", _GENERATION_ROUTE, "generator", "lambda_recon",
         _with_g),
    Term("cycle", "Eqs. 5, 6, L1 cycle reconstruction", "generation", _GENERATION_ROUTE, "generator", "lambda_cyc",
         _with_g),
    Term("gan", "Eq. 7, LSGAN, generator side", "generation", _GENERATION_ROUTE, "generator", "lambda_gan", _with_g),
    # The official code's MUNIT term, not in the paper's Eq. 8 (--lambda_code=0, the default).
    Term("code", "re-encoded content and style codes of the generated images", "generation", _GENERATION_ROUTE,
         "generator", "lambda_code", lambda config: config.model.generation and config.loss.lambda_code > 0),
    Term("discriminator", "Eq. 7, LSGAN on DETACHED fakes", "generation", ("discriminators",), "discriminator",
         None, _with_g),
    Term("variation", "Eq. 10 on stop_gradient(M^i)", "generation", ("variation",), "variation", None, _with_g),
    Term("id_cls", "Eq. 13 on the real re-ID images", "reid", _REID_ROUTE, "reid", None, _always),
    Term("id_triplet", "Eq. 13", "reid", _REID_ROUTE, "reid", None, _always),
    # No local regions (--num_regions=0): no C^k.
    Term("local_id", "C^k's identity loss on the real images' stripes (PCB; Eq. 12's LR)", "reid", _REID_ROUTE,
         "reid", "lambda_local_id", lambda config: config.model.num_regions > 0),
    Term("il", "Eq. 11 on (real, DETACHED generated)", "generation", _REID_ROUTE, "alignment", "lambda_il",
         lambda config: config.loss.il, Switch("il", True, f"false: {_NO_PAIRS}", alone=False)),
    # --local=off: no Eq. 12; the C^k still learn identities (local_id). --local=unpaired
    # reads the real images alone.
    Term("local", "Eq. 12 on (real, DETACHED generated)", "generation", _REID_ROUTE, "alignment", "lambda_local",
         lambda config: config.loss.local != "off" and config.model.num_regions > 0,
         Switch("local", "paired", f"'off' or 'unpaired': {_NO_PAIRS}", alone="off")),
    Term("ui", "Eq. 15 on DETACHED mixed images", "generation", _REID_ROUTE, "alignment", "lambda_ui",
         lambda config: config.loss.ui,
         Switch("ui", True, "false: no mixed images without modules G and V", alone=False)),
    # --sl=gan only (Dai et al. 2018).
    Term("modality_discriminator", "the modality discriminator on STOPPED E^sl maps", "reid", ("discriminators",),
         "discriminator", None, _modality_gan, _SL_GAN),
    Term("modality_adversarial", "E^sl's maps pushed to D = 1/2", "reid", ("reid_set_level",),
         "modality_adversarial", "lambda_modality", _modality_gan, _SL_GAN),
)
