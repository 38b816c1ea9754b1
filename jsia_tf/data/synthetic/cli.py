"""``python -m jsia_tf.data.synthetic``: writes a dataset and/or an example sheet.

Command line::

  python -m jsia_tf.data.synthetic --out=/data/regdb_synth --layout=regdb \
      --num_ids=40 --seed=0 [--height=256 --width=128] [--sheet=docs/synthetic_examples.png]
"""

import os

from absl import app
from absl import flags
from PIL import Image

from jsia_tf.data.synthetic.cameras import example_sheet
from jsia_tf.data.synthetic.layouts import LAYOUTS, REGDB_IMAGES_PER_ID, generate


def save_example_sheet(path, seed=0, num_ids=6, height=256, width=128):
    """Writes ``example_sheet`` as a PNG."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(example_sheet(seed, num_ids, height, width)).save(path, format="PNG", optimize=True)


def _define_flags():
    """The CLI's flags. Defined only when run as a script: the training entry point
    imports this module and owns flags of the same names (--seed, --height)."""
    flags.DEFINE_string("out", None, "Dataset folder to write.")
    flags.DEFINE_enum("layout", "regdb", LAYOUTS, "On-disk layout: RegDB or SYSU-MM01.")
    flags.DEFINE_integer("num_ids", 40, "Number of persons (pids 1..num_ids).")
    flags.DEFINE_integer("seed", 0, "Random seed; the same seed writes byte-identical files.")
    flags.DEFINE_integer("height", 256, "Image height in pixels.")
    flags.DEFINE_integer("width", 128, "Image width in pixels.")
    flags.DEFINE_integer("images_per_id", REGDB_IMAGES_PER_ID, "RegDB: images per person and modality.")
    flags.DEFINE_integer("test_ids", 0, "SYSU-MM01: test persons, pids 1..test_ids (0: ~20% of the ids).")
    flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Processes rendering persons in parallel.")
    flags.DEFINE_bool("overwrite", False, "Replace a dataset of this layout already in --out.")
    flags.DEFINE_string("sheet", None, "Also write a PNG of example persons (rows: RegDB visible, RegDB "
                        "thermal, SYSU-MM01 near-infrared).")


def main(argv):
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.out is None and FLAGS.sheet is None:
        raise app.UsageError("pass --out=DIR (a dataset) and/or --sheet=PATH (an example PNG)")
    try:
        if FLAGS.out is not None:
            generate(FLAGS.out, FLAGS.layout, FLAGS.num_ids, FLAGS.seed, FLAGS.height, FLAGS.width,
                     images_per_id=FLAGS.images_per_id, test_ids=FLAGS.test_ids, overwrite=FLAGS.overwrite,
                     num_workers=FLAGS.num_workers)
        if FLAGS.sheet is not None:
            save_example_sheet(FLAGS.sheet, FLAGS.seed, height=FLAGS.height, width=FLAGS.width)
    except (ValueError, FileExistsError) as error:
        raise app.UsageError(str(error))


def run():
    """Console-script entry point (``jsia-synthetic``)."""
    _define_flags()
    app.run(main)
