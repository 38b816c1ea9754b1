"""Export of the re-ID embedder, Eq. 17 (paper Sec. 3.4): a SavedModel for TensorFlow Serving,
LiteRT files for edge devices.

Only the test-time path of module F is exported: E^sl, E^il and, for the "bn" test
feature, the batch norm of the identity classifier C; no generator, discriminator, VAE,
classifier weights or local-region classifier. Preprocessing is in the graph and is
:func:`jsia_tf.data.pipeline.preprocess`, the function training and evaluation use.

``export_embedder`` writes ``export_dir/<version>/``, the numbered folder TF Serving
loads (the highest number wins), with three signatures and no training flag:

- ``serving_default``: ``images`` uint8 [N, H, W, C], N >= 1, any H and W up to
  ``max_pixels`` (H x W), C 1 (gray, such as thermal images) or 3 (RGB) ->
  ``embedding`` float32 [N, D], L2-normalised.
- ``embed_encoded``: ``image_bytes`` string [N], BMP/GIF/JPEG/PNG files up to
  ``max_pixels`` -> ``embedding``; a bad item is named by its index.
- ``metadata``: no input -> ``metadata_json``, a string scalar: the JSON document
  that is also written to ``assets/jsia_metadata.json`` (embedding dimension, input
  size, preprocessing, model version, training config hash, ...).

A version folder appears complete or not at all: it is written under a temporary
name TF Serving ignores, then renamed.

``export_litert`` writes the same embedder as LiteRT ``.tflite`` files for edge devices,
float or quantised (:mod:`jsia_tf.litert` has their signature, metadata and quantisations).

Command line, from a training run (the training job calls :func:`export_trainer` at
its end too)::

  python -m jsia_tf.export --run_dir=RUN [--checkpoint=RUN/checkpoints/ckpt-N] --export_dir=models/jsia \
      [--format=saved_model|litert|both] [--quantization=none,float16,dynamic_int8,int8,int8_float_head] \
      [--calibration_images=N] [--data_dir=DATASET] [--max_pixels=N]

``--quantization`` (a list) applies to the LiteRT files. ``int8`` and
``int8_float_head`` calibrate on ``--calibration_images`` training images of the run's
dataset, half RGB and half IR (``--data_dir`` if the dataset has moved since training).
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile

from absl import app, flags
import tensorflow as tf

from jsia_tf import config as config_lib
from jsia_tf import config_flags, litert, runs
from jsia_tf.data import pipeline
from jsia_tf.models import alignment

METADATA_ASSET = "jsia_metadata.json"
SIGNATURES = ("serving_default", "embed_encoded", "metadata")
FORMATS = config_lib.EXPORT_FORMATS
DEFAULT_CALIBRATION_IMAGES = config_lib.default(config_lib.ExportConfig, "calibration_images")
DEFAULT_MAX_PIXELS = config_lib.default(config_lib.ExportConfig, "max_pixels")  # pixels, H x W
PREPROCESSING = ("jsia_tf.data.pipeline.preprocess: gray -> 3 channels, antialiased bilinear resize to "
                 "{height}x{width}, caffe normalisation (RGB -> BGR minus the ImageNet mean pixel "
                 "(103.939, 116.779, 123.68), no scaling)")
_VERSION_DIR = re.compile(r"^[0-9]+$")


def config_fingerprint(config):
    """SHA-256 of a training config (a JSON-serialisable dict), independent of key order.

    Pass it as ``metadata={"training_config_sha256": config_fingerprint(config)}``.
    """
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def next_version(export_dir):
    """1 + the highest integer folder name in ``export_dir`` (1 if there is none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(name) for name in os.listdir(export_dir)
                if _VERSION_DIR.match(name) and os.path.isdir(os.path.join(export_dir, name))]
    return max(versions, default=0) + 1


class Embedder(tf.Module):
    """Eq. 17 at test time on raw pixels; tracks only the variables it reads.

    Args:
      model: a built :class:`jsia_tf.models.alignment.FeatureAlignment`.
      height, width: the input size of the model (paper: 256x128).
      max_pixels: the largest image (H x W) accepted; larger is InvalidArgument.
    """

    def __init__(self, model, height, width, max_pixels=DEFAULT_MAX_PIXELS):
        super().__init__(name="jsia_embedder")
        self.height = height
        self.width = width
        self.max_pixels = max_pixels
        self.gray_input = model.gray_input
        self.set_level_encoder = model.set_level_encoder
        self.instance_level_encoder = model.instance_level_encoder
        # Only what Eq. 17 reads is tracked (and so saved): not the classifiers' FC kernels.
        self.batch_norm = model.classifier.batch_norm if model.test_features == "bn" else None

    def embed_preprocessed(self, images):
        """:meth:`FeatureAlignment.embed`: preprocessed [N, H, W, 3] -> float32 [N, D]."""
        return alignment.eq17_embedding(images, self.set_level_encoder, self.instance_level_encoder,
                                        self.batch_norm, self.gray_input)

    def embed_pixels(self, images):
        """uint8 [N, H, W, C], C in {1, 3} -> float32 [N, D]; InvalidArgument otherwise."""
        shape = tf.shape(images)
        checks = [
            tf.debugging.assert_positive(shape[0], message="images: the batch is empty (N must be >= 1)"),
            tf.debugging.Assert(tf.logical_or(shape[3] == 1, shape[3] == 3),
                                ["images: expected 1 (gray) or 3 (RGB) channels, got shape", shape], summarize=4),
            self._assert_size("images (each of {} items)", shape[0], shape[1], shape[2]),
        ]
        with tf.control_dependencies(checks):
            rgb = tf.cond(shape[3] == 1, lambda: tf.tile(images, [1, 1, 1, 3]), lambda: tf.identity(images))
        rgb = tf.ensure_shape(rgb, [None, None, None, 3])  # preprocess needs a static channel dimension
        return self.embed_preprocessed(pipeline.preprocess(rgb, self.height, self.width))

    def _assert_size(self, item, index, height, width):
        """InvalidArgument naming the item (``item``, a format string of ``index``) and the
        limit if ``height`` x ``width`` is above ``max_pixels``."""
        pixels = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
        message = tf.strings.format(item + ": {}x{} = {} pixels, above the limit of {} pixels (max_pixels)",
                                    (index, height, width, pixels, self.max_pixels))
        return tf.debugging.Assert(pixels <= self.max_pixels, [message])

    def embed_encoded(self, image_bytes):
        """string [N] of BMP/GIF/JPEG/PNG files -> float32 [N, D].

        Each file's format and size are read from its header before it is decoded, so
        that an item that is not an image, or too large, is InvalidArgument naming its
        index (and the limit) without its pixels ever being allocated.
        """
        check = tf.debugging.assert_positive(tf.size(image_bytes), message="image_bytes: the batch is empty")

        def load(item):
            index, data = item
            known, height, width = encoded_size(data)
            checks = [tf.debugging.Assert(known, [tf.strings.format(
                "image_bytes[{}]: not a BMP, GIF, JPEG or PNG file", index)])]
            with tf.control_dependencies(checks):
                checks.append(self._assert_size("image_bytes[{}]", index, height, width))
            with tf.control_dependencies(checks):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)  # uint8 [h, w, 3]
            return pipeline.preprocess(image, self.height, self.width)  # [H, W, 3]

        with tf.control_dependencies([check]):
            images = tf.map_fn(load, (tf.range(tf.size(image_bytes)), image_bytes),
                               fn_output_signature=tf.TensorSpec([self.height, self.width, 3], tf.float32))
        return self.embed_preprocessed(images)  # images: [N, H, W, 3]


def _header_int(data, offset, dtype, little_endian):
    """The integer of ``dtype`` at byte ``offset`` of the string scalar ``data`` (int64)."""
    return tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, dtype.size), dtype,
                                    little_endian=little_endian)[0], tf.int64)


def encoded_size(data):
    """``(known, height, width)`` of an image file from its header, without decoding it.

    ``known``: BMP, GIF, JPEG or PNG magic bytes (the formats ``tf.io.decode_image``
    reads); the size is 0 x 0 for another file. Header layouts: PNG's IHDR (big-endian
    width, height at bytes 16, 20), BMP's info header (little-endian at 18, 22; a
    negative height is a top-down bitmap), GIF's screen descriptor (16-bit at 6, 8);
    JPEG's SOF marker through ``tf.image.extract_jpeg_shape``.
    """
    padded = tf.strings.join([data, tf.constant(b"\0" * 26)])  # every header field is then in range
    start = tf.strings.substr(padded, 0, 8)
    png = tf.equal(start, b"\x89PNG\r\n\x1a\n")
    bmp = tf.equal(tf.strings.substr(start, 0, 2), b"BM")
    gif = tf.equal(tf.strings.substr(start, 0, 4), b"GIF8")
    jpeg = tf.equal(tf.strings.substr(start, 0, 3), b"\xff\xd8\xff")
    zero = tf.constant(0, tf.int64)
    height, width = tf.case([
        (png, lambda: (_header_int(padded, 20, tf.int32, False), _header_int(padded, 16, tf.int32, False))),
        (bmp, lambda: (tf.abs(_header_int(padded, 22, tf.int32, True)), _header_int(padded, 18, tf.int32, True))),
        (gif, lambda: (_header_int(padded, 8, tf.uint16, True), _header_int(padded, 6, tf.uint16, True))),
        (jpeg, lambda: tuple(tf.unstack(tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)))),
    ], default=lambda: (zero, zero), exclusive=False)
    return tf.reduce_any(tf.stack([png, bmp, gif, jpeg])), height, width


def _check_size(height, width):
    for name, size in (("height", height), ("width", width)):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"export {name}={size!r}: expected a positive integer")


def metadata_document(model, height, width, format_entries, metadata=None):
    """The metadata document of an export: what every format records, its own entries, and the caller's.

    Raises:
      ValueError: ``metadata`` would replace an entry computed here.
    """
    document = {
        "model": "JSIA-ReID embedder (Eq. 17), module F",
        "embedding_dim": int(model.instance_level_encoder.output_shape[-1]),
        "input_height": height,
        "input_width": width,
        "preprocessing": PREPROCESSING.format(height=height, width=width),
        "test_features": model.test_features,
        "gray_input": model.gray_input,
        "tensorflow_version": tf.__version__,
        **format_entries,
    }
    clashes = sorted(set(metadata or {}) & set(document))
    if clashes:
        raise ValueError(f"export metadata: {clashes} are computed by the export and cannot be given")
    return {**document, **(metadata or {})}


def export_embedder(model, export_dir, height, width, metadata=None, version=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Writes the embedder of ``model`` as SavedModel ``export_dir/<version>/``.

    Args:
      model: a built :class:`jsia_tf.models.alignment.FeatureAlignment` (its weights
        restored).
      export_dir: the model's base path (TF Serving's ``base_path``), created if needed.
      height, width: input size the images are resized to, the training size.
      metadata: extra JSON-serialisable entries for the metadata document, such as
        ``{"training_config_sha256": config_fingerprint(config)}``; they may not
        replace the entries computed here.
      version: the version folder number; default 1 + the highest existing one.
      max_pixels: the largest image (H x W) both image signatures accept (recorded in
        the metadata); a larger one is INVALID_ARGUMENT naming its index and the limit.

    Returns:
      The path of the version folder.

    Raises:
      ValueError: a bad size, version or metadata entry.
      FileExistsError: the version folder exists.
    """
    _check_size(height, width)
    if version is None:
        version = next_version(export_dir)
    elif not isinstance(version, int) or version < 1:
        raise ValueError(f"export_embedder version={version!r}: expected a positive integer")
    version_dir = os.path.join(export_dir, str(version))
    if os.path.exists(version_dir):
        raise FileExistsError(f"{version_dir} exists; export a new version or remove it")

    embedder = Embedder(model, height, width, max_pixels)
    document = metadata_document(model, height, width, {"model_version": version, "signatures": list(SIGNATURES),
                                                        "max_pixels": max_pixels}, metadata)
    document_json = json.dumps(document, indent=2, sort_keys=True)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name="images")])
    def serving_default(images):
        return {"embedding": embedder.embed_pixels(images)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def embed_encoded(image_bytes):
        return {"embedding": embedder.embed_encoded(image_bytes)}

    @tf.function(input_signature=[])
    def metadata_signature():
        return {"metadata_json": tf.constant(document_json)}

    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)  # not an integer: TF Serving skips it
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the model from a server running as another user
        tf.saved_model.save(embedder, staging, signatures={
            "serving_default": serving_default, "embed_encoded": embed_encoded, "metadata": metadata_signature})
        os.makedirs(os.path.join(staging, "assets"), exist_ok=True)
        with open(os.path.join(staging, "assets", METADATA_ASSET), "w") as f:
            f.write(document_json + "\n")
        os.rename(staging, version_dir)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    return version_dir


def export_litert(model, export_dir, height, width, quantizations=("none",), representative=None, metadata=None):
    """Writes the embedder of ``model`` as ``export_dir/embedder_<quantization>.tflite`` files.

    Args:
      model: a built :class:`jsia_tf.models.alignment.FeatureAlignment` (its weights restored).
      export_dir: the folder, created if needed.
      height, width: the input size, the training size (LiteRT needs static shapes).
      quantizations: some of :data:`jsia_tf.litert.QUANTIZATIONS`.
      representative: with int8 quantisations, ``(images, counts)`` of
        :func:`jsia_tf.litert.representative_images`, recorded in their metadata.
      metadata: extra JSON-serialisable entries for every model's metadata document.
    Returns:
      The paths of the files, in the order of ``quantizations``.
    Raises:
      ValueError: a bad size, quantization or metadata entry; int8 without representative images.
      FileExistsError: a file exists (nothing is written then).
    """
    _check_size(height, width)
    unknown = [q for q in quantizations if q not in litert.QUANTIZATIONS]
    if unknown or not quantizations:
        raise ValueError(f"quantization={','.join(quantizations)}: expected some of {', '.join(litert.QUANTIZATIONS)}")
    calibrated = [q for q in quantizations if q in litert.CALIBRATED]
    if calibrated and representative is None:
        raise ValueError(f"quantization={calibrated[0]}: needs representative images (calibration_images) to "
                         "calibrate")
    paths = [os.path.join(export_dir, litert.file_name(q)) for q in quantizations]
    existing = [path for path in paths if os.path.exists(path)]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} exist; export into another folder or remove them")
    embedder = Embedder(model, height, width)
    os.makedirs(export_dir, exist_ok=True)
    for quantization, path in zip(quantizations, paths):
        entries = {"quantization": quantization, "signatures": [litert.SIGNATURE],
                   "input": litert.INPUT.format(height=height, width=width)}
        images = None
        if quantization in litert.CALIBRATED:
            images, counts = representative
            entries.update(calibration_images=len(images), calibration_rgb=counts["rgb"], calibration_ir=counts["ir"])
        document = metadata_document(model, height, width, entries, metadata)
        model_bytes = litert.with_metadata(litert.convert(embedder, height, width, quantization, images), document)
        with open(path + ".tmp", "wb") as f:  # a reader never sees half a file
            f.write(model_bytes)
        os.replace(path + ".tmp", path)
    return paths


def export_trainer(trainer, export_dir, checkpoint=None, formats=("saved_model",), quantizations=("none",),
                   calibration_images=DEFAULT_CALIBRATION_IMAGES, data_dir=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Exports the embedder of a trainer's module F with its run's metadata.

    Args:
      trainer: a :class:`jsia_tf.trainer.Trainer` with its weights.
      export_dir: the model's base path; a new version folder is written.
      checkpoint: the checkpoint the weights come from, recorded in the metadata.
      formats: "saved_model" and/or "litert".
      quantizations, calibration_images, data_dir: of the LiteRT files; int8 calibrates
        on ``calibration_images`` training images of the run's dataset (at ``data_dir``,
        default the run's).
      max_pixels: of the SavedModel's image signatures (:func:`export_embedder`).
    Returns:
      The paths written: the SavedModel's version folder, then the ``.tflite`` files.
    """
    cfg = trainer.config
    model, height, width = trainer.model.alignment, cfg.data.height, cfg.data.width
    metadata = {"training_config_sha256": config_fingerprint(dataclasses.asdict(cfg)),
                "num_classes": trainer.num_classes, "dataset": cfg.data.dataset, "checkpoint": checkpoint or ""}
    written = []
    if "saved_model" in formats:
        written.append(export_embedder(model, export_dir, height, width, metadata=metadata, max_pixels=max_pixels))
    if "litert" in formats:
        representative = None
        if set(quantizations) & set(litert.CALIBRATED):
            dataset = pipeline.load_dataset(cfg.data.dataset, data_dir or cfg.data.data_dir, trial=cfg.data.trial)
            representative = litert.representative_images(dataset, calibration_images, height, width)
        written += export_litert(model, export_dir, height, width, quantizations, representative, metadata)
    return written


def export_run(run_dir, export_dir, checkpoint=None, **options):
    """Exports the embedder of a training run (:func:`jsia_tf.runs.load_run`'s arguments and errors;
    ``options`` as :func:`export_trainer`'s)."""
    trainer, checkpoint = runs.load_run(run_dir, checkpoint)
    return export_trainer(trainer, export_dir, checkpoint, **options)


def main(argv):
    options = config_flags.options(config_lib.ExportConfig, argv)
    flag_values = flags.FLAGS
    formats = ("saved_model", "litert") if options.format == "both" else (options.format,)
    if "litert" not in formats:
        given = [f"--{n}" for n in ("quantization", "calibration_images", "data_dir") if flag_values[n].present]
        if given:
            raise app.UsageError(f"{', '.join(given)}: only used with --format=litert or --format=both")
    try:
        written = export_run(flag_values.run_dir, flag_values.export_dir, flag_values.checkpoint or None,
                             formats=formats, quantizations=options.quantization,
                             calibration_images=options.calibration_images, data_dir=flag_values.data_dir,
                             max_pixels=options.max_pixels)
    except (ValueError, FileExistsError) as err:
        raise app.UsageError(str(err)) from None
    for path in written:
        print(f"exported {path}")


def run():
    """Console-script entry point (``jsia-export``)."""
    # Flags are defined only when run as a program: importers (train.py) own flags too.
    flags.DEFINE_string("run_dir", None, "Training run folder (config.json, dataset.json, checkpoints/).")
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix; default the newest of the run.")
    flags.DEFINE_string("export_dir", None, "TF Serving base path (a new version folder is written in it) and the "
                        "folder of the .tflite files.")
    config_flags.define(config_lib.ExportConfig)
    flags.DEFINE_string("data_dir", None, "LiteRT int8: the run's dataset root, if not where config.json says.")
    flags.mark_flags_as_required(["run_dir", "export_dir"])
    app.run(main)


if __name__ == "__main__":
    run()
