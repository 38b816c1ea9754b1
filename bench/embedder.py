"""Inference throughput of the exported embedder, against the machine's matmul FLOP rate.

Builds module F (ResNet-50 with last stride 1, random weights: timing does not depend on
them), exports it with ``jsia_tf.export`` in float32 and in mixed_bfloat16, reloads the
SavedModel and times its ``serving_default`` signature (uint8 images, preprocessing
inside) at each batch size: the median over ``--repeats`` calls after one warm-up call.

FLOPs per image are counted, not assumed: every Conv2D and MatMul of the embedding
graph at batch 1, multiply-accumulates from its static shapes (output height x width x
output channels x kernel height x width x input channels; m x k x n), 2 FLOPs per MAC.
Batch norm, ReLU, pooling and preprocessing are left out (a few %).

The machine's rate is measured the same way: the median time of a ``--matmul_size``
square ``tf.linalg.matmul`` in float32 and in bfloat16, 2 n^3 FLOPs each.

    python bench/embedder.py [--batch_sizes=1,32,128] [--repeats=3]
"""

import os
import tempfile

from absl import app, flags
import keras
import numpy as np
import tensorflow as tf

from jsia_tf import config, export
from jsia_tf.models import alignment, backbone
from timing import median_seconds

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "32", "128"], "Batch sizes timed.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per batch size (median reported).")
_HEIGHT = flags.DEFINE_integer("height", 256, "Input height.")
_WIDTH = flags.DEFINE_integer("width", 128, "Input width.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 4096, "Side of the square matmul measuring the FLOP rate.")
_PRECISIONS = flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Keras dtype policies exported.")

NUM_CLASSES = 395  # SYSU-MM01 training ids (only the classifier's size; not in the embedder)


def matmul_flops_per_second(size, dtype, repeats):
    a = tf.random.normal([size, size], dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda: tf.linalg.matmul(a, a)[0, 0])  # one scalar back: no big copy
    return 2 * size ** 3 / median_seconds(lambda: matmul().numpy(), repeats)


def count_flops(concrete_function):
    """2 x the multiply-accumulates of the Conv2D and MatMul ops of a batch-1 graph."""
    macs = 0
    for op in concrete_function.graph.get_operations():
        if op.type == "Conv2D":
            kh, kw, cin, _ = op.inputs[1].shape.as_list()
            _, ho, wo, cout = op.outputs[0].shape.as_list()
            macs += ho * wo * cout * kh * kw * cin
        elif op.type == "MatMul":
            m, n = op.outputs[0].shape.as_list()
            k = op.inputs[0].shape.as_list()[0 if op.get_attr("transpose_a") else 1]
            macs += m * n * k
    return 2 * macs


def build_model(height, width):
    parts = backbone.build_backbone("resnet50", weights="none")
    model = alignment.FeatureAlignment(parts.set_level_encoder, parts.instance_level_encoder, NUM_CLASSES,
                                       num_regions=config.DEFAULT_NUM_REGIONS)
    model(np.zeros((1, height, width, 3), np.float32))
    return model


def main(argv):
    del argv
    height, width, repeats = _HEIGHT.value, _WIDTH.value, _REPEATS.value
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    rates = {dtype: matmul_flops_per_second(_MATMUL_SIZE.value, dtype, repeats) for dtype in (tf.float32,
                                                                                              tf.bfloat16)}
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; matmul {_MATMUL_SIZE.value}^2: "
          + ", ".join(f"{dtype.name} {rate / 1e9:.1f} GFLOP/s" for dtype, rate in rates.items()))
    rng = np.random.default_rng(0)
    rows = []
    for precision in _PRECISIONS.value:
        keras.mixed_precision.set_global_policy(precision)
        model = build_model(height, width)
        with tempfile.TemporaryDirectory() as base_path:
            export.export_embedder(model, base_path, height, width)
            signature = tf.saved_model.load(f"{base_path}/1").signatures["serving_default"]
            flops = count_flops(tf.function(export.Embedder(model, height, width).embed_preprocessed)
                                .get_concrete_function(tf.TensorSpec([1, height, width, 3], tf.float32)))
            rate = rates[tf.bfloat16 if "bfloat16" in precision else tf.float32]
            for batch_size in batch_sizes:
                images = tf.constant(rng.integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8))
                seconds = median_seconds(lambda: signature(images=images)["embedding"].numpy(), repeats)
                per_second = batch_size / seconds
                rows.append((precision, batch_size, per_second, 1000 * seconds / batch_size,
                             per_second * flops / rate, flops))
    keras.mixed_precision.set_global_policy("float32")
    print(f"embedder {height}x{width}, {rows[0][5] / 1e9:.2f} GFLOP/image (Conv2D + MatMul, 2 FLOPs per MAC), "
          f"median of {repeats}, load average now {os.getloadavg()[0]:.1f}")
    print("| precision | batch | images/s | ms/image | FLOP rate / matmul rate |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for precision, batch_size, per_second, ms, utilisation, _ in rows:
        print(f"| {precision} | {batch_size} | {per_second:.1f} | {ms:.1f} | {100 * utilisation:.0f} % |")


if __name__ == "__main__":
    app.run(main)
