"""Throughput of the training input pipeline (decode + augment + normalise + batch).

Generates a synthetic RegDB-layout dataset (``jsia_tf.data.synthetic``, 40 ids,
256x128 BMP) in a temporary folder, then times ``pipeline.train_dataset`` at the
paper's batch (16 ids x (4 RGB + 4 IR) = 128 images, 256x128) with the default
augmentation, without random erasing, without any augmentation, and with channel
augmentation. Images/s counts RGB and IR images.

    python bench/input_pipeline.py [--num_batches=20] [--warmup=3]
"""

import os
import tempfile
import time

from absl import app, flags

from jsia_tf.data import pipeline, synthetic

_NUM_BATCHES = flags.DEFINE_integer("num_batches", 20, "Timed batches per configuration.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches first (tracing, buffers).")

NUM_IDS = 40  # trial 1 trains on 20 of them
HEIGHT, WIDTH = 256, 128
NUM_IDS_PER_BATCH, NUM_INSTANCES = 16, 4  # paper Sec. 4.2
CONFIGS = {
    "default (flip, pad 10, erasing 0.5)": pipeline.AugmentConfig(),
    "no random erasing": pipeline.AugmentConfig(random_erasing=0.0),
    "no augmentation": pipeline.AugmentConfig(flip=False, pad=0, random_erasing=0.0),
    "default + channel aug 0.5": pipeline.AugmentConfig(channel_aug=0.5),
}


def time_batches(dataset, augment, num_batches, warmup):
    """(images/s, seconds per batch) over ``num_batches`` after ``warmup`` batches."""
    batches = iter(pipeline.train_dataset(dataset, NUM_IDS_PER_BATCH, NUM_INSTANCES, HEIGHT, WIDTH, seed=0,
                                          augment=augment))
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    seconds = time.perf_counter() - start
    return num_batches * 2 * NUM_IDS_PER_BATCH * NUM_INSTANCES / seconds, seconds / num_batches


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as root:
        synthetic.generate(root, "regdb", NUM_IDS, seed=0, height=HEIGHT, width=WIDTH)
        dataset = pipeline.load_dataset("regdb", root, trial=1)
        print(f"synthetic RegDB, {dataset.num_classes} training ids, {HEIGHT}x{WIDTH} BMP, batch "
              f"{NUM_IDS_PER_BATCH} ids x ({NUM_INSTANCES} RGB + {NUM_INSTANCES} IR), {os.cpu_count()} cores")
        for name, augment in CONFIGS.items():
            rate, seconds = time_batches(dataset, augment, _NUM_BATCHES.value, _WARMUP.value)
            print(f"{name:38s} {rate:8.1f} images/s  {1000 * seconds:7.1f} ms/batch")


if __name__ == "__main__":
    app.run(main)
