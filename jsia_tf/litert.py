"""LiteRT (TensorFlow Lite) models of the re-ID embedder, Eq. 17 (paper Sec. 3.4), for edge devices.

The same test-time path as the SavedModel (:class:`jsia_tf.export.Embedder`: E^sl,
E^il, the classifier's batch norm, L2 normalisation) and the same preprocessing in the
graph (:func:`jsia_tf.data.pipeline.preprocess`), converted by TensorFlow's own
``tf.lite.TFLiteConverter`` and run by the maintained LiteRT interpreter
(``ai-edge-litert``, XNNPACK on CPUs).

A LiteRT model has static shapes except the batch, so a ``.tflite`` embedder takes
images of the training size only (the caller resizes, as a camera pipeline does when
it crops a detection; :func:`load_pixels` does it as training does):

- signature ``serving_default``: ``images`` uint8 [N, H, W, 3], N dynamic (>= 1), H x W
  the run's input size -> ``embedding`` float32 [N, D], L2-normalised.
- the model's metadata entry ``jsia_metadata`` (:data:`METADATA_NAME`): the JSON
  document of the SavedModel export (``embedding_dim``, ``input_height``,
  ``input_width``, preprocessing, ...) plus ``input``, ``quantization`` and, for
  ``int8``, the calibration set (``calibration_images``, ``calibration_rgb``,
  ``calibration_ir``). :func:`read_metadata` reads it; the signature's shapes say the
  input size and embedding size too.

Quantisations (:data:`QUANTIZATIONS`), what the converter does for each:

- ``none``: float32 weights and activations.
- ``float16``: float16 weights, dequantised to float32 when the model is loaded.
- ``dynamic_int8``: int8 weights; activations quantised on the fly, per batch.
- ``int8``: full-integer. int8 weights (per output channel) and activations, whose
  ranges come from a representative set of the run's own training images of both
  modalities (:func:`representative_images`). The uint8 pixels go in as they are and the
  embedding comes out dequantised to float32. Every op must have an int8 kernel
  (``TFLITE_BUILTINS_INT8``): the conversion fails rather than keep an op in float.
- ``int8_float_head``: ``int8`` except the head, from the global average pooling on
  (V, the BN-neck, the L2 normalisation), which stays float32 (selective quantisation):
  the convolutions are int8, the pooling averages their dequantised output. Full int8
  gives the pooled features V a step that erases the differences between persons: on
  the calibration run the converter gave MEAN's output a scale of 0.235 (a range of 0 to
  60) while V spans 0.25 to 1.59 and a feature varies between images by a median
  standard deviation of 0.043; rank-1 fell from 28.4 to 5.5 %. Keeping the BN-neck and
  the L2 normalisation alone in float did not help; keeping the pooling too did
  (28.3 %). Same size and speed as ``int8`` (docs/BENCHMARKS.md, "At the edge: LiteRT").
"""

import json

import numpy as np
import tensorflow as tf
# The converter's own freezing step (``TFLiteConverter._freeze_concrete_function``); see _frozen_signature.
from tensorflow.python.framework import convert_to_constants

from jsia_tf import config
from jsia_tf.data import pipeline

QUANTIZATIONS = config.LITERT_QUANTIZATIONS
CALIBRATED = ("int8", "int8_float_head")  # the quantisations that need representative images
# int8_float_head: the ops from the global average pooling on stay float32 (see convert).
FLOAT_HEAD_FROM = "MEAN"
METADATA_NAME = "jsia_metadata"
SIGNATURE = "serving_default"
INPUT_NAME, OUTPUT_NAME = "images", "embedding"
INPUT = ("uint8 [N, {height}, {width}, 3], N >= 1: images resized to {height}x{width} beforehand "
         "(antialiased bilinear, rounded; jsia_tf.litert.load_pixels)")


def file_name(quantization):
    """``embedder_<float32|float16|dynamic_int8|int8|int8_float_head>.tflite``: the file ``jsia_tf.export``
    writes."""
    return f"embedder_{'float32' if quantization == 'none' else quantization}.tflite"


def load_pixels(path, height, width):
    """uint8 [height, width, 3] pixels of an image file, resized as :func:`pipeline.preprocess` does
    (antialiased bilinear, then rounded to the nearest integer)."""
    return tf.cast(tf.round(pipeline.resize(pipeline.decode_image(path), height, width)), tf.uint8).numpy()


def representative_images(dataset, count, height, width, seed=0):
    """The int8 calibration set: ``count`` training images, half of them IR, drawn without replacement.

    Both modalities: the activation ranges of one modality do not cover the other (a
    thermal image is gray, its features differ), and an int8 model calibrated on one
    clips the other.

    Args:
      dataset: a :class:`jsia_tf.data.records.Dataset` (its ``train_rgb`` and ``train_ir``).
      count: number of images, >= 2; ``count // 2`` IR and the rest RGB.
    Returns:
      ``(images, counts)``: uint8 [count, height, width, 3] (RGB first, then IR), and
      ``{"rgb": n, "ir": m}``.
    Raises:
      ValueError: ``count`` < 2, or more images asked of a modality than it has.
    """
    counts = {"rgb": count - count // 2, "ir": count // 2}
    if count < 2:
        raise ValueError(f"calibration_images={count}: expected at least 2 (one RGB, one IR image)")
    rng = np.random.default_rng(seed)
    paths = []
    for modality, images in (("rgb", dataset.train_rgb), ("ir", dataset.train_ir)):
        if counts[modality] > len(images):
            raise ValueError(f"calibration_images={count}: asks for {counts[modality]} {modality.upper()} "
                             f"training images, the dataset has {len(images)}")
        paths.extend(rng.choice(images.paths, counts[modality], replace=False))
    return np.stack([load_pixels(path, height, width) for path in paths]), counts


def _frozen_signature(embedder, height, width):
    """``serving_default`` of ``embedder`` with its variables folded into constants.

    The converter's SavedModel path keeps Keras 3's variables as resource variables
    (VAR_HANDLE / READ_VARIABLE ops), which LiteRT leaves uninitialised (NaN embeddings)
    and XNNPACK cannot take; its old path freezes them but writes no signature. So we
    freeze, as the old path does, and convert a variable-free function of the frozen graph.
    """
    spec = tf.TensorSpec([None, height, width, 3], tf.uint8, name=INPUT_NAME)
    embed = tf.function(lambda images: embedder.embed_preprocessed(pipeline.preprocess(images, height, width)))
    frozen = convert_to_constants.convert_variables_to_constants_v2(embed.get_concrete_function(spec))
    holder = tf.Module()
    holder.signature = tf.function(lambda images: {OUTPUT_NAME: tf.nest.flatten(frozen(images))[0]},
                                   input_signature=[spec])
    return holder.signature.get_concrete_function(), holder


def _tail_tensors(float_model, first_op):
    """Output tensor names of the ops of ``float_model`` from the last ``first_op`` (a LiteRT
    builtin op name such as "MEAN") on, in execution order (the order of the flatbuffer)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(float_model))
    graph = model.subgraphs[0]
    op_names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    kinds = [op_names[flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])]
             for op in graph.operators]
    if first_op not in kinds:
        raise ValueError(f"float_from={first_op!r}: the model has no such op; it has {sorted(set(kinds))}")
    start = len(kinds) - 1 - kinds[::-1].index(first_op)
    return [graph.tensors[i].name.decode("utf-8") for op in graph.operators[start:] for i in op.outputs]


def convert(embedder, height, width, quantization, representative=None, per_channel=True, float_from=None):
    """The ``.tflite`` bytes of an :class:`jsia_tf.export.Embedder` (without metadata).

    Args:
      embedder: the :class:`jsia_tf.export.Embedder` of a trained module F.
      height, width: the input size.
      quantization: one of :data:`QUANTIZATIONS`.
      representative: with :data:`CALIBRATED` ones, uint8 [M, height, width, 3]
        calibration images (:func:`representative_images`).
      per_channel: with those, one scale per output channel of each weight (False: one
        per tensor).
      float_from: with those, keep the ops from the last op of this LiteRT type on in
        float32 (selective quantisation): "MEAN" (what ``int8_float_head`` keeps), "MUL"
        (the BN-neck and the L2 normalisation), "L2_NORMALIZATION".
    Raises:
      ValueError: an unknown quantization or op, or int8 without representative images.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r}: expected one of {', '.join(QUANTIZATIONS)}")
    signature, holder = _frozen_signature(embedder, height, width)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([signature], holder)
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization in CALIBRATED:
        if representative is None or len(representative) == 0:
            raise ValueError(f"quantization={quantization}: needs representative images to calibrate the activation "
                             "ranges")
        calibration = lambda: ([image[None]] for image in representative)  # noqa: E731; batch 1
        converter.representative_dataset = calibration
        converter._experimental_disable_per_channel = not per_channel  # pylint: disable=protected-access
        float_from = FLOAT_HEAD_FROM if quantization == "int8_float_head" else float_from
        if float_from:
            # The converter's own selective quantisation: denylisted ops stay float32.
            head = _tail_tensors(convert(embedder, height, width, "none"), float_from)
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=calibration,
                debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=head))
            return debugger.get_nondebug_quantized_model()
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def with_metadata(model_bytes, document):
    """``model_bytes`` with ``document`` (a dict) as JSON under the metadata entry :data:`METADATA_NAME`."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(document, sort_keys=True).encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(model_bytes):
    """The JSON document under :data:`METADATA_NAME` of a ``.tflite`` model, as a dict.

    Raises:
      ValueError: the model has no such entry (not a ``jsia_tf.export`` LiteRT model).
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name().decode("utf-8") == METADATA_NAME:
            return json.loads(model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes())
    raise ValueError(f"no '{METADATA_NAME}' metadata: not a LiteRT model written by jsia_tf.export")


class LiteRTEmbedder:
    """A ``.tflite`` embedder in the LiteRT interpreter: uint8 images in, embeddings out.

    Checks what the interpreter would silently cast or reshape: the dtype, the rank and
    size, and an empty batch get a ValueError naming what the model expects.

    Args:
      path: a ``.tflite`` file written by ``jsia_tf.export --format=litert``.
      num_threads: interpreter threads (None: LiteRT's default).
    Attributes:
      height, width, embedding_dim, metadata (the model's JSON metadata document).
    """

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        with open(path, "rb") as f:
            model_bytes = f.read()
        try:
            self.metadata = read_metadata(model_bytes)
            interpreter = Interpreter(model_content=model_bytes, num_threads=num_threads)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        self.height, self.width = self.metadata["input_height"], self.metadata["input_width"]
        self.embedding_dim = self.metadata["embedding_dim"]
        self._run = interpreter.get_signature_runner(SIGNATURE)

    @property
    def expected(self):
        return f"uint8 [N, {self.height}, {self.width}, 3] (or 1 gray channel), N >= 1"

    def __call__(self, images):
        """uint8 [N, H, W, C], C 1 (gray, replicated) or 3 -> float32 [N, D], L2-normalised."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"images: expected {self.expected}; got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[1:3] != (self.height, self.width) or images.shape[3] not in (1, 3):
            raise ValueError(f"images: expected {self.expected}; got shape {images.shape}")
        if len(images) == 0:
            raise ValueError(f"images: the batch is empty; expected {self.expected}")
        if images.shape[3] == 1:
            images = np.repeat(images, 3, axis=3)
        return self._run(**{INPUT_NAME: images})[OUTPUT_NAME]

    def embed_files(self, paths, batch_size=64):
        """float32 [len(paths), D]: the image files, resized by :func:`load_pixels`, embedded in batches."""
        return np.concatenate([self(np.stack([load_pixels(path, self.height, self.width)
                                              for path in paths[i:i + batch_size]]))
                               for i in range(0, len(paths), batch_size)])
