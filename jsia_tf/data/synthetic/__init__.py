"""Synthetic RGB-infrared pedestrians in the on-disk layouts of RegDB and SYSU-MM01.

The project's embedded default dataset: procedural pedestrians written exactly as
the real datasets are stored, so one set of readers (``regdb.py``, ``sysu.py``)
serves both. It keeps what makes RGB-IR re-ID hard (Sec. 1 of the paper):

* An identity is a fixed set of attributes drawn from ``(seed, pid)`` (``persons.py``).
* Every image is an independent draw of pose (walking phase, front / back / side
  view), placement, background clutter, illumination, noise and blur. The RGB and
  IR images of a person come from different draws: the data are unpaired.
* All modalities are rendered from one part-label map (``visible.py``). RGB colours
  the parts; the IR renderings (``infrared.py``: near-infrared for SYSU-MM01,
  thermal for RegDB) read the identity's ``Infrared`` attributes and never a colour,
  so persons who differ only in colour look the same in IR: the IR -> RGB mapping
  is one-to-many, the premise of JSIA-ReID.

``cameras.py`` renders an image as one camera sees it; ``layouts.py`` writes the
datasets (and the true RGB-IR pairs of the test persons); ``cli.py`` is the command
line (``python -m jsia_tf.data.synthetic``). Runs are reproducible: the same
arguments write byte-identical files, and ``RENDER_VERSION`` changes whenever the
rendered bytes do.
"""

from jsia_tf.data.synthetic.cameras import (
    NIR, REGDB_THERMAL, REGDB_VISIBLE, SYSU_CAMERAS, THERMAL, Camera, example_sheet, render_identity_images,
    render_image)
from jsia_tf.data.synthetic.infrared import part_nir_reflectance, part_temperatures
from jsia_tf.data.synthetic.layouts import (
    LAYOUTS, METADATA_FILE, PAIRED_FILE, PAIRS_PER_ID, REGDB_IMAGES_PER_ID, RENDER_VERSION, generate,
    layout_entries, metadata, read_paired_test)
from jsia_tf.data.synthetic.persons import (
    BACKGROUND, BAG, COLLAR, FACE, HAIR, INNER, IR_VISIBLE_COUPLING, LOWER, NUM_PARTS, SHOES, SKIN, UPPER,
    UPPER_PRINT, VIEWS, Colours, Fold, Identity, ImageDraw, Infrared, sample_identity, sample_image_draw)
from jsia_tf.data.synthetic.visible import render_maps, render_parts
