"""absl flags made from the options of :mod:`jsia_tf.config`.

Every entry point defines its flags from the dataclasses there and reads them back into
those dataclasses, so that an option's default, help and choices are written once, in
config.py (which itself imports no absl).
"""

import dataclasses
import typing

from absl import app
from absl import flags

from jsia_tf import config as config_lib


def option_fields(cls):
    """The fields of the dataclass ``cls`` made by ``config.option``: one flag each."""
    return [field for field in dataclasses.fields(cls) if "help" in field.metadata]


def define(cls, required=()):
    """Defines the flag of every option of ``cls``; those named in ``required`` have no default."""
    for field in option_fields(cls):
        name, default, text = config_lib.flag_name(field), field.default, field.metadata["help"]
        if name in required:
            flags.DEFINE_string(name, None, text)
        elif field.metadata["choices"]:
            flags.DEFINE_enum(name, default, field.metadata["choices"], text)
        elif typing.get_origin(field.type) is tuple:
            flags.DEFINE_list(name, [str(v) for v in default], text)
        else:
            define_flag = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
                           str: flags.DEFINE_string}[field.type]
            define_flag(name, default, text)


def int_list(flag, values):
    """The integers of a comma-list flag, or a ConfigError naming it."""
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise config_lib.ConfigError(flag, ",".join(values), "comma-separated integers") from None


def value(field):
    """The parsed value of the flag of ``field``, of the field's type."""
    name = config_lib.flag_name(field)
    parsed = flags.FLAGS[name].value
    if typing.get_origin(field.type) is tuple:
        return int_list(name, parsed) if typing.get_args(field.type)[0] is int else tuple(parsed)
    return "" if parsed is None else parsed  # a required flag missing: the config names it


def values(cls):
    """{field name: its flag's value} for every option of ``cls``."""
    return {field.name: value(field) for field in option_fields(cls)}


def options(cls, argv=None):
    """``cls`` built from its flags, the start of every command line's ``main``: an invalid
    value, or a positional argument where ``argv`` takes none, is an ``app.UsageError``
    naming it (one line and the usage, not a traceback)."""
    if argv is not None and len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        return cls(**values(cls))
    except ValueError as err:
        raise app.UsageError(str(err)) from None
