"""``python -m jsia_tf.data.synthetic``: writes a dataset and/or an example sheet.

Command line::

  python -m jsia_tf.data.synthetic --out=/data/regdb_synth --layout=regdb \
      --num_ids=40 --seed=0 [--height=H --width=W] [--sheet=docs/synthetic_examples.png]
"""

import os

from absl import app
from absl import flags
from PIL import Image

from jsia_tf import config, config_flags
from jsia_tf.data.synthetic.cameras import example_sheet
from jsia_tf.data.synthetic.layouts import generate


def save_example_sheet(path, height, width, seed=0, num_ids=6):
    """Writes ``example_sheet`` as a PNG."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(example_sheet(height, width, seed, num_ids)).save(path, format="PNG", optimize=True)


def _define_flags():
    """The CLI's flags. Defined only when run as a script: the training entry point
    imports this module and owns flags of the same names (--seed, --height)."""
    flags.DEFINE_string("out", None, "Dataset folder to write.")
    config_flags.define(config.SyntheticConfig)
    flags.DEFINE_string("sheet", None, "Also write a PNG of example persons (rows: RegDB visible, RegDB "
                        "thermal, SYSU-MM01 near-infrared).")


def main(argv):
    FLAGS = flags.FLAGS
    options = config_flags.options(config.SyntheticConfig, argv)
    if FLAGS.out is None and FLAGS.sheet is None:
        raise app.UsageError("pass --out=DIR (a dataset) and/or --sheet=PATH (an example PNG)")
    try:
        if FLAGS.out is not None:
            generate(FLAGS.out, options.layout, options.num_ids, options.seed, options.height, options.width,
                     images_per_id=options.images_per_id, test_ids=options.test_ids, overwrite=options.overwrite,
                     num_workers=options.num_workers or os.cpu_count() or 1)
        if FLAGS.sheet is not None:
            save_example_sheet(FLAGS.sheet, options.height, options.width, options.seed)
    except (ValueError, FileExistsError) as error:
        raise app.UsageError(str(error))


def run():
    """Console-script entry point (``jsia-synthetic``)."""
    _define_flags()
    app.run(main)
