"""Speed of the synthetic dataset generator at 256x128.

  python bench/synthetic_speed.py [--num_ids=20] [--height=256 --width=128]

Prints render-only throughput per camera kind (no disk), then ids/s and images/s
of ``generate`` (render + encode + write) for both layouts, with one worker and
with one worker per core.
"""

import os
import tempfile
import time

from absl import app
from absl import flags

from jsia_tf.data import synthetic

flags.DEFINE_integer("num_ids", 20, "Persons per generated dataset.")
flags.DEFINE_integer("height", 256, "Image height.")
flags.DEFINE_integer("width", 128, "Image width.")
FLAGS = flags.FLAGS


def _render_rate(camera, num_images, height, width):
    """Images per second of render_image alone."""
    identities = [synthetic.sample_identity(0, pid) for pid in range(1, num_images + 1)]
    draws = [synthetic.sample_image_draw(0, pid, camera, 1) for pid in range(1, num_images + 1)]
    start = time.perf_counter()
    for identity, draw in zip(identities, draws):
        synthetic.render_image(identity, draw, camera, height, width)
    return num_images / (time.perf_counter() - start)


def _generate_rate(layout, num_ids, height, width, num_workers):
    """(images written, seconds) of one ``generate`` call into a temporary folder."""
    with tempfile.TemporaryDirectory() as root:
        out = os.path.join(root, layout)
        start = time.perf_counter()
        synthetic.generate(out, layout, num_ids, seed=0, height=height, width=width, num_workers=num_workers)
        seconds = time.perf_counter() - start
        images = sum(len(names) for _, _, names in os.walk(out) if names and names[0].endswith((".bmp", ".jpg")))
    return images, seconds


def main(argv):
    del argv
    height, width, num_ids = FLAGS.height, FLAGS.width, FLAGS.num_ids
    print(f"render only, {height}x{width}, 1 process")
    for name, camera in (("RGB", synthetic.REGDB_VISIBLE), ("IR", synthetic.REGDB_THERMAL)):
        print(f"  {name:<4}{_render_rate(camera, 100, height, width):8.0f} images/s")
    cores = os.cpu_count() or 1
    print(f"\ngenerate, {num_ids} ids, {height}x{width}, {cores} cores")
    print(f"  {'layout':<7}{'workers':>8}{'images':>8}{'seconds':>9}{'ids/s':>8}{'images/s':>10}")
    for layout in synthetic.LAYOUTS:
        for workers in sorted({1, cores}):
            images, seconds = _generate_rate(layout, num_ids, height, width, workers)
            print(f"  {layout:<7}{workers:>8}{images:>8}{seconds:>9.2f}{num_ids / seconds:>8.1f}"
                  f"{images / seconds:>10.0f}")


if __name__ == "__main__":
    app.run(main)
