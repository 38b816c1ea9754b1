"""What each LiteRT quantisation of a trained run's embedder costs: accuracy, size, speed.

Exports the run's embedder (``jsia_tf.export``) as a SavedModel and as LiteRT models
(float32, float16, dynamic-range int8, full int8 and the int8 variants of --variants),
then, for each:

- embeds the run's test set, every model fed the same uint8 images of the input size
  (``jsia_tf.litert.load_pixels``: decoded, resized as training does, rounded), and
  scores both directions: SYSU-MM01 all-search single-shot (IR -> RGB, 10 gallery
  draws) and both full-gallery directions (``protocols.evaluate_full_galleries``), or
  RegDB v2t and t2v; plus the largest |difference| from the SavedModel's L2-normalised
  embeddings;
- file size (the SavedModel: its folder);
- ms per image at batch 1 on 1 and 2 threads, images/s at batch 32 on 2 threads: the
  median of --repeats calls after one warm-up call, on random uint8 images. LiteRT runs in
  ``ai_edge_litert``'s interpreter (XNNPACK); the SavedModel in a child process per
  thread count (TensorFlow fixes its thread pools at start).

    python bench/litert_models.py --run_dir=RUN [--data_dir=DATASET] [--calibration_images=256] [--repeats=20]

Not ``bench/litert.py``: run as a script, its folder comes first on ``sys.path``, and
TensorFlow's LiteRT wrappers try ``import litert.python...`` before their own path.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags
import numpy as np

from jsia_tf import export, litert, runs
from jsia_tf.data import pipeline
from jsia_tf.eval import protocols
from timing import median_seconds

# The steps towards int8_float_head: where full int8 loses its accuracy.
VARIANTS = {"per_tensor": {"per_channel": False}, "float_l2": {"float_from": "L2_NORMALIZATION"},
            "float_bn_neck_l2": {"float_from": "MUL"}}

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Trained run (python -m jsia_tf.train).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The run's dataset root, if not where config.json says.")
_CALIBRATION_IMAGES = flags.DEFINE_integer("calibration_images", export.DEFAULT_CALIBRATION_IMAGES,
                                           "int8 calibration images (half RGB, half IR).", lower_bound=2)
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per setting (median reported).", lower_bound=1)
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"int8 variants also measured, some of {list(VARIANTS)}.")
_KEEP = flags.DEFINE_string("keep", None, "Folder to keep the exported models in (default: a temporary one).")
_TIME_SAVED_MODEL = flags.DEFINE_string("time_saved_model", None, "Internal: time this SavedModel, print JSON.")
_SIZE = flags.DEFINE_string("size", None, "Internal: HxW of --time_saved_model's images.")

THREADS = (1, 2)
BATCH = 32

def litert_seconds(path, threads, batch, height, width, repeats):
    images = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    embedder = litert.LiteRTEmbedder(path, num_threads=threads)
    return median_seconds(lambda: embedder(images), repeats)


def saved_model_seconds(path, threads, height, width, repeats):
    """{batch: median seconds} of a SavedModel, timed by this script in a child process whose
    TensorFlow has ``threads`` intra-op threads."""
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, __file__, f"--time_saved_model={path}", f"--repeats={repeats}",
                             f"--size={height}x{width}"], capture_output=True, text=True, env=env, check=True)
    return {int(k): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def time_saved_model(path, height, width, repeats):
    import tensorflow as tf

    embed = tf.saved_model.load(path).signatures["serving_default"]
    rng = np.random.default_rng(0)
    seconds = {}
    for batch in (1, BATCH):
        images = tf.constant(rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8))
        seconds[batch] = median_seconds(lambda: embed(images=images)["embedding"].numpy(), repeats)
    print(json.dumps(seconds))


def size_bytes(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def score(features, test, dataset):
    """{direction: (rank-1, mAP)}, both directions of the dataset's protocol."""
    if dataset == "regdb":
        results = {d: protocols.evaluate_regdb(features, test.pids, test.cams, d) for d in protocols.REGDB_DIRECTIONS}
    else:
        results = {"sysu_all_1shot": protocols.evaluate_sysu(features, test.pids, test.cams, test.image_index)}
        results.update(protocols.evaluate_full_galleries(features, test.pids, test.cams, dataset))
    return {name: (r["cmc"]["1"], r["mAP"]) for name, r in results.items()}


def main(argv):
    del argv
    if _TIME_SAVED_MODEL.value:
        height, width = map(int, _SIZE.value.split("x"))
        return time_saved_model(_TIME_SAVED_MODEL.value, height, width, _REPEATS.value)
    if not _RUN_DIR.value:
        raise app.UsageError("--run_dir is required")
    import tensorflow as tf

    trainer, checkpoint = runs.load_run(_RUN_DIR.value)
    cfg = trainer.config
    height, width, name = cfg.data.height, cfg.data.width, cfg.data.dataset
    dataset = pipeline.load_dataset(name, _DATA_DIR.value or cfg.data.data_dir, trial=cfg.data.trial)
    out_dir = _KEEP.value or tempfile.mkdtemp(prefix="bench_litert_")
    model = trainer.model.alignment
    representative = litert.representative_images(dataset, _CALIBRATION_IMAGES.value, height, width)
    saved_model = export.export_embedder(model, out_dir, height, width)
    rows = [("SavedModel", saved_model)]
    for quantization, path in zip(litert.QUANTIZATIONS, export.export_litert(
            model, out_dir, height, width, litert.QUANTIZATIONS, representative)):
        rows.append((f"LiteRT {quantization if quantization != 'none' else 'float32'}", path))
    embedder = export.Embedder(model, height, width)
    with open(dict(rows)["LiteRT int8"], "rb") as f:
        int8_metadata = litert.read_metadata(f.read())
    for variant in _VARIANTS.value:
        path = os.path.join(out_dir, f"embedder_int8_{variant}.tflite")
        model_bytes = litert.convert(embedder, height, width, "int8", representative[0], **VARIANTS[variant])
        with open(path, "wb") as f:
            f.write(litert.with_metadata(model_bytes, {**int8_metadata, "quantization": f"int8, {variant}"}))
        rows.append((f"LiteRT int8, {variant.replace('_', ' ')}", path))

    pixels = np.stack([litert.load_pixels(p, height, width) for p in dataset.test.paths])  # uint8 [N, H, W, 3]
    signature = tf.saved_model.load(saved_model).signatures["serving_default"]
    reference = np.concatenate([signature(images=tf.constant(pixels[i:i + 256]))["embedding"].numpy()
                                for i in range(0, len(pixels), 256)])
    print(f"run {_RUN_DIR.value} ({checkpoint}), {name} test set: {len(pixels)} images {height}x{width}; "
          f"int8 calibrated on {len(representative[0])} training images ({representative[1]}); "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; models in {out_dir}")
    results = []
    for label, path in rows:
        if path.endswith(".tflite"):
            model_embedder = litert.LiteRTEmbedder(path, num_threads=2)
            features = np.concatenate([model_embedder(pixels[i:i + 256]) for i in range(0, len(pixels), 256)])
            batch1 = {t: litert_seconds(path, t, 1, height, width, _REPEATS.value) for t in THREADS}
            batch32 = litert_seconds(path, 2, BATCH, height, width, max(3, _REPEATS.value // 4))
        else:
            features = reference
            timings = {t: saved_model_seconds(path, t, height, width, _REPEATS.value) for t in THREADS}
            batch1, batch32 = {t: timings[t][1] for t in THREADS}, timings[2][BATCH]
        results.append(dict(label=label, scores=score(features, dataset.test, name),
                            max_diff=float(np.abs(features - reference).max()), size=size_bytes(path),
                            ms1=[1000 * batch1[t] for t in THREADS], per_second=BATCH / batch32))
    directions = list(results[0]["scores"])
    print(f"load average now {os.getloadavg()[0]:.1f}; rank-1 / mAP in %; max |diff| from the SavedModel's "
          "L2-normalised embeddings")
    print("| model | " + " | ".join(f"{d} R1 / mAP" for d in directions)
          + " | max diff | size (MB) | ms/image batch 1, 1 thread | 2 threads | images/s batch 32, 2 threads |")
    print("| --- |" + " ---: |" * (len(directions) + 5))
    for r in results:
        print(f"| {r['label']} | " + " | ".join(f"{100 * r1:.1f} / {100 * m:.1f}" for r1, m in r["scores"].values())
              + f" | {r['max_diff']:.1e} | {r['size'] / 1e6:.2f} | {r['ms1'][0]:.2f} | {r['ms1'][1]:.2f} | "
              f"{r['per_second']:.0f} |")
    by_label = {r["label"]: r for r in results}
    float32 = by_label["LiteRT float32"]
    for label in ("LiteRT int8", "LiteRT int8_float_head"):
        int8 = by_label[label]
        print(f"{label} / LiteRT float32: {float32['size'] / int8['size']:.2f}x smaller, batch 1 "
              f"{float32['ms1'][0] / int8['ms1'][0]:.2f}x (1 thread) and {float32['ms1'][1] / int8['ms1'][1]:.2f}x "
              "(2 threads) faster")


if __name__ == "__main__":
    app.run(main)
