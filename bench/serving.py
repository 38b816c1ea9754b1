"""Latency and throughput of the exported embedder: gRPC (loopback Predict server) vs in-process SavedModel.

  python bench/serving.py [--backbone=resnet50] [--height=256 --width=128] \\
      [--latency_requests=30] [--throughput_requests=4] [--batch_size=32]

Module F on a ResNet-50 (last stride 1, random weights: timing does not depend on them)
is exported with jsia_tf.export to a temporary folder, then each path runs the same
uint8 requests, taking turns, after one warm-up call each:
- latency: ``--latency_requests`` calls of 1 image, p50 and p99 in ms;
- throughput: ``--throughput_requests`` calls of ``--batch_size`` images, images/s.
"in-process" calls the reloaded ``serving_default`` signature; "gRPC" sends the same
request through EmbeddingClient to jsia_tf.serving.server on 127.0.0.1 in this process.
"""

import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from jsia_tf import config, export
from jsia_tf.models import alignment, backbone
from jsia_tf.serving.client import EmbeddingClient
from jsia_tf.serving.server import serve

_BACKBONE = flags.DEFINE_enum("backbone", "resnet50", list(backbone.BACKBONES), "Backbone of module F.")
_HEIGHT = flags.DEFINE_integer("height", 256, "Input height (the images are this size).")
_WIDTH = flags.DEFINE_integer("width", 128, "Input width.")
_LATENCY_REQUESTS = flags.DEFINE_integer("latency_requests", 30, "Timed batch-1 calls per path.", lower_bound=2)
_THROUGHPUT_REQUESTS = flags.DEFINE_integer("throughput_requests", 4, "Timed large-batch calls per path.",
                                            lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per throughput call.", lower_bound=1)

# Only the embedding path is exported: the number of identities does not change the timing.
_NUM_CLASSES = 2


def timed_calls(paths, images, count):
    """{name: seconds of each of ``count`` calls of ``paths[name](images)``}, after one warm-up call each.

    The paths take turns, so that load from elsewhere on the machine hits them alike.
    """
    for call in paths.values():
        call(images)
    seconds = {name: [] for name in paths}
    for _ in range(count):
        for name, call in paths.items():
            start = time.perf_counter()
            call(images)
            seconds[name].append(time.perf_counter() - start)
    return {name: np.array(values) for name, values in seconds.items()}


def main(argv):
    del argv
    height, width, batch_size = _HEIGHT.value, _WIDTH.value, _BATCH_SIZE.value
    parts = backbone.build_backbone(_BACKBONE.value, weights="none")
    model = alignment.FeatureAlignment(parts.set_level_encoder, parts.instance_level_encoder, _NUM_CLASSES,
                                       num_regions=config.DEFAULT_NUM_REGIONS)
    model(np.zeros((1, height, width, 3), np.float32))
    rng = np.random.default_rng(0)
    single = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8)

    with tempfile.TemporaryDirectory() as base_path:
        export.export_embedder(model, base_path, height, width)
        signature = tf.saved_model.load(f"{base_path}/1").signatures["serving_default"]
        server, port = serve(base_path, port=0, model_name="jsia", max_batch_size=batch_size)
        try:
            with EmbeddingClient(f"127.0.0.1:{port}", timeout=600.0) as client:
                paths = {
                    "in-process": lambda images: signature(images=tf.constant(images))["embedding"].numpy(),
                    "gRPC": lambda images: client.embed(images, batch_size=batch_size),
                }
                latency = timed_calls(paths, single, _LATENCY_REQUESTS.value)
                batch_seconds = timed_calls(paths, batch, _THROUGHPUT_REQUESTS.value)
        finally:
            server.stop(grace=None)

    print(f"{_BACKBONE.value} embedder (random weights), {height}x{width} uint8 input, "
          f"{_LATENCY_REQUESTS.value} batch-1 calls, {_THROUGHPUT_REQUESTS.value} batch-{batch_size} calls per path")
    print(f"| path | p50 batch 1 (ms) | p99 batch 1 (ms) | throughput batch {batch_size} (img/s) |")
    print("| --- | ---: | ---: | ---: |")
    for name in paths:
        print(f"| {name} | {1e3 * np.percentile(latency[name], 50):.1f} | {1e3 * np.percentile(latency[name], 99):.1f} "
              f"| {batch_size / batch_seconds[name].mean():.1f} |")
    p50 = {name: np.percentile(seconds, 50) for name, seconds in latency.items()}
    print(f"gRPC / in-process: p50 latency x{p50['gRPC'] / p50['in-process']:.3f}, "
          f"throughput x{batch_seconds['in-process'].mean() / batch_seconds['gRPC'].mean():.3f}")


if __name__ == "__main__":
    app.run(main)
