"""The tiny networks of configs/smoke.flags, for the tests that build a Trainer themselves:
the smoke preset is the one place where their sizes are written."""

import dataclasses
import pathlib
import typing

from jsia_tf import config as config_lib

SMOKE_FLAGS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "smoke.flags"


def smoke_model(**overrides):
    """The smoke preset's :class:`jsia_tf.config.ModelConfig`, with ``overrides`` (field values)."""
    given = {}
    for line in SMOKE_FLAGS.read_text().splitlines():
        if line.startswith("--"):
            name, _, value = line[2:].partition("=")
            given[name] = value
    fields = {}
    for field in dataclasses.fields(config_lib.ModelConfig):
        name = config_lib.flag_name(field)
        if field.type is bool and (name in given or f"no{name}" in given):
            fields[field.name] = name in given and given[name] in ("", "true")
        elif name in given and typing.get_origin(field.type) is tuple:
            fields[field.name] = tuple(typing.get_args(field.type)[0](v) for v in given[name].split(","))
        elif name in given:
            fields[field.name] = field.type(given[name])
    return config_lib.ModelConfig(**{**fields, **overrides})
