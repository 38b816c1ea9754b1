"""SavedModel export of the re-ID embedder, Eq. 17 (paper Sec. 3.4), for TensorFlow Serving.

Only the test-time path of module F is exported: E^sl, E^il and, for the "bn" test
feature, the batch norm of the identity classifier C; no generator, discriminator, VAE,
classifier weights or local-region classifier. Preprocessing is in the graph and is
:func:`jsia_tf.data.pipeline.preprocess`, the function training and evaluation use.

``export_embedder`` writes ``export_dir/<version>/``, the numbered folder TF Serving
loads (the highest number wins), with three signatures and no training flag:

- ``serving_default``: ``images`` uint8 [N, H, W, C], N >= 1, any H and W, C 1 (gray,
  such as thermal images) or 3 (RGB) -> ``embedding`` float32 [N, D], L2-normalised.
- ``embed_encoded``: ``image_bytes`` string [N], BMP/JPEG/PNG files -> ``embedding``.
- ``metadata``: no input -> ``metadata_json``, a string scalar: the JSON document
  that is also written to ``assets/jsia_metadata.json`` (embedding dimension, input
  size, preprocessing, model version, training config hash, ...).

A version folder appears complete or not at all: it is written under a temporary
name TF Serving ignores, then renamed.

Command line, from a training run (the training job calls :func:`export_trainer` at
its end too)::

  python -m jsia_tf.export --run_dir=RUN [--checkpoint=RUN/checkpoints/ckpt-N] --export_dir=models/jsia
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

from jsia_tf import runs
from jsia_tf.data import pipeline
from jsia_tf.models import alignment

METADATA_ASSET = "jsia_metadata.json"
SIGNATURES = ("serving_default", "embed_encoded", "metadata")
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
    """

    def __init__(self, model, height, width):
        super().__init__(name="jsia_embedder")
        self.height = height
        self.width = width
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
        ]
        with tf.control_dependencies(checks):
            rgb = tf.cond(shape[3] == 1, lambda: tf.tile(images, [1, 1, 1, 3]), lambda: tf.identity(images))
        rgb = tf.ensure_shape(rgb, [None, None, None, 3])  # preprocess needs a static channel dimension
        return self.embed_preprocessed(pipeline.preprocess(rgb, self.height, self.width))

    def embed_encoded(self, image_bytes):
        """string [N] of BMP/JPEG/PNG files -> float32 [N, D]; InvalidArgument if one does not decode."""
        check = tf.debugging.assert_positive(tf.size(image_bytes), message="image_bytes: the batch is empty")

        def load(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)  # uint8 [h, w, 3]
            return pipeline.preprocess(image, self.height, self.width)  # [H, W, 3]

        with tf.control_dependencies([check]):
            images = tf.map_fn(load, image_bytes, fn_output_signature=tf.TensorSpec(
                [self.height, self.width, 3], tf.float32))  # [N, H, W, 3]
        return self.embed_preprocessed(images)


def export_embedder(model, export_dir, height, width, metadata=None, version=None):
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

    Returns:
      The path of the version folder.

    Raises:
      ValueError: a bad size, version or metadata entry.
      FileExistsError: the version folder exists.
    """
    for name, size in (("height", height), ("width", width)):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"export_embedder {name}={size!r}: expected a positive integer")
    if version is None:
        version = next_version(export_dir)
    elif not isinstance(version, int) or version < 1:
        raise ValueError(f"export_embedder version={version!r}: expected a positive integer")
    version_dir = os.path.join(export_dir, str(version))
    if os.path.exists(version_dir):
        raise FileExistsError(f"{version_dir} exists; export a new version or remove it")

    embedder = Embedder(model, height, width)
    embedding_dim = int(model.instance_level_encoder.output_shape[-1])
    document = {
        "model": "JSIA-ReID embedder (Eq. 17), module F",
        "model_version": version,
        "embedding_dim": embedding_dim,
        "input_height": height,
        "input_width": width,
        "preprocessing": PREPROCESSING.format(height=height, width=width),
        "test_features": model.test_features,
        "gray_input": model.gray_input,
        "signatures": list(SIGNATURES),
        "tensorflow_version": tf.__version__,
    }
    clashes = sorted(set(metadata or {}) & set(document))
    if clashes:
        raise ValueError(f"export_embedder metadata: {clashes} are computed by the export and cannot be given")
    document.update(metadata or {})
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


def export_trainer(trainer, export_dir, checkpoint=None):
    """Exports the embedder of a trainer's module F with its run's metadata.

    Args:
      trainer: a :class:`jsia_tf.trainer.Trainer` with its weights.
      export_dir: the model's base path; a new version folder is written.
      checkpoint: the checkpoint the weights come from, recorded in the metadata.
    Returns:
      The path of the version folder.
    """
    cfg = trainer.config
    metadata = {"training_config_sha256": config_fingerprint(dataclasses.asdict(cfg)),
                "num_classes": trainer.num_classes, "dataset": cfg.data.dataset, "checkpoint": checkpoint or ""}
    return export_embedder(trainer.model.alignment, export_dir, cfg.data.height, cfg.data.width, metadata=metadata)


def export_run(run_dir, export_dir, checkpoint=None):
    """Exports the embedder of a training run (:func:`jsia_tf.runs.load_run`'s arguments and errors)."""
    trainer, checkpoint = runs.load_run(run_dir, checkpoint)
    return export_trainer(trainer, export_dir, checkpoint)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    flag_values = flags.FLAGS
    try:
        version_dir = export_run(flag_values.run_dir, flag_values.export_dir, flag_values.checkpoint or None)
    except (ValueError, FileExistsError) as err:
        raise app.UsageError(str(err)) from None
    print(f"exported {version_dir}")


def run():
    """Console-script entry point (``jsia-export``)."""
    # Flags are defined only when run as a program: importers (train.py) own flags too.
    flags.DEFINE_string("run_dir", None, "Training run folder (config.json, dataset.json, checkpoints/).")
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix; default the newest of the run.")
    flags.DEFINE_string("export_dir", None, "TF Serving base path; a new version folder is written in it.")
    flags.mark_flags_as_required(["run_dir", "export_dir"])
    app.run(main)


if __name__ == "__main__":
    run()
