"""A loopback stand-in for TensorFlow Serving's gRPC Predict API, for tests and demos.

  python -m jsia_tf.serving.server --model_base_path=models/jsia [--port=8500] \\
      [--host=127.0.0.1] [--model_name=jsia] [--max_batch_size=256]

It answers ``PredictionService.Predict`` and ``GetModelMetadata``
(``tensorflow_serving.apis``) over a SavedModel from :func:`jsia_tf.export.export_embedder`
with TF Serving's semantics: the highest version folder of the base path is served;
``NOT_FOUND`` for an unknown model name, version or signature; ``INVALID_ARGUMENT`` for
an input that does not fit the signature (missing or extra key, dtype, rank, a fixed
dimension, an empty or too large batch) and for what the graph refuses (channels not 1
or 3, an image above the export's ``max_pixels``, bytes that are not an image; an item of
``embed_encoded`` is named by its index). A bad request never stops the server; a
command-line start without a model to serve is one ``error:`` line.

It is a test double, not a replacement: one model, loaded once at start (no polling of
the base path for new versions), no REST API, no batching, no model config file.
Deploy with TensorFlow Serving (serving/README.md).
"""

import concurrent.futures
import dataclasses
import os
import sys

import grpc
import tensorflow as tf
from absl import app, flags, logging
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from jsia_tf import config as config_lib
from jsia_tf import config_flags
from jsia_tf.data import pipeline

DEFAULT_SIGNATURE = "serving_default"
DEFAULTS = config_lib.ServerConfig()  # the command line's
DEFAULT_MAX_CONCURRENT_RPCS = 64


class RequestError(Exception):
    """A request the server refuses with ``code`` (a grpc.StatusCode)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def latest_version(model_base_path):
    """The highest integer folder of ``model_base_path``; FileNotFoundError if none."""
    if not os.path.isdir(model_base_path):
        raise FileNotFoundError(f"--model_base_path={model_base_path}: no such folder")
    versions = [int(name) for name in os.listdir(model_base_path)
                if name.isdigit() and os.path.isdir(os.path.join(model_base_path, name))]
    if not versions:
        raise FileNotFoundError(f"{model_base_path}: no version folder (1/, 2/, ...) to serve")
    return max(versions)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata for one SavedModel version (the other RPCs: UNIMPLEMENTED).

    Args:
      model_base_path: folder of numbered SavedModel versions.
      model_name: the name requests must give.
      max_batch_size: largest batch (first dimension) accepted.
    """

    def __init__(self, model_base_path, model_name, max_batch_size=DEFAULTS.max_batch_size):
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        self.version = latest_version(model_base_path)
        version_dir = os.path.join(model_base_path, str(self.version))
        self._loaded = tf.saved_model.load(version_dir)
        self._signatures = dict(self._loaded.signatures)
        # name -> {input key: tf.TensorSpec}; checked here because calling a signature
        # from Python silently casts dtypes, where TF Serving refuses them.
        self._input_specs = {name: fn.structured_input_signature[1] for name, fn in self._signatures.items()}
        saved_model = saved_model_pb2.SavedModel()
        with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
            saved_model.ParseFromString(f.read())
        self._signature_defs = saved_model.meta_graphs[0].signature_def
        logging.info("serving %s version %d (%s) with signatures %s", model_name, self.version, version_dir,
                     sorted(self._signatures))

    def _check_model_spec(self, model_spec):
        if model_spec.name != self.model_name:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({model_spec.name})")
        if model_spec.HasField("version_label"):
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no version label {model_spec.version_label!r}: this "
                                                          f"server has version {self.version} only")
        if model_spec.HasField("version") and model_spec.version.value != self.version:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: "
                                                          f"Specific({model_spec.name}, {model_spec.version.value})")

    def _inputs(self, signature_name, request_inputs):
        """The request's tensors as NumPy arrays, checked against the signature."""
        specs = self._input_specs[signature_name]
        if set(request_inputs) != set(specs):
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature {signature_name!r}: sent {sorted(request_inputs)}, expected "
                f"{sorted(specs)}. Sent extra: {sorted(set(request_inputs) - set(specs))}. Missing but required: "
                f"{sorted(set(specs) - set(request_inputs))}.")
        arrays = {}
        for key, spec in specs.items():
            proto = request_inputs[key]
            if proto.dtype != spec.dtype.as_datatype_enum:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {key!r}: expects dtype {spec.dtype.name}, got "
                                   f"{tf.dtypes.as_dtype(proto.dtype).name}")
            try:
                array = tf.make_ndarray(proto)
            except (TypeError, ValueError) as error:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key!r}: cannot parse the tensor "
                                                                     f"({error})") from error
            if not spec.shape.is_compatible_with(array.shape):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {key!r}: expects shape {spec.shape}, got {list(array.shape)}")
            if array.ndim and not 1 <= array.shape[0] <= self.max_batch_size:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {key!r}: batch size {array.shape[0]} is outside [1, "
                                   f"{self.max_batch_size}]")
            arrays[key] = array
        return arrays

    def Predict(self, request, context):
        try:
            self._check_model_spec(request.model_spec)
            signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            if signature_name not in self._signatures:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Serving signature name: {signature_name!r} not found in signature def; "
                                   f"available: {sorted(self._signatures)}")
            unknown = set(request.output_filter) - set(self._signature_defs[signature_name].outputs)
            if unknown:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {sorted(unknown)}")
            inputs = self._inputs(signature_name, request.inputs)
            try:
                outputs = self._signatures[signature_name](**inputs)
            except tf.errors.OpError as error:  # the graph's own checks: channels, size, undecodable bytes
                message = pipeline.op_error_line(error.message)
                if signature_name == "embed_encoded" and "image_bytes[" not in message:
                    message = _undecodable_item(inputs["image_bytes"]) or message
                raise RequestError(_GRPC_CODES[error.error_code], message) from error
        except RequestError as error:
            context.abort(error.code, str(error))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = signature_name
        for key, tensor in outputs.items():
            if not request.output_filter or key in request.output_filter:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
        return response

    def GetModelMetadata(self, request, context):
        try:
            self._check_model_spec(request.model_spec)
            if list(request.metadata_field) != ["signature_def"]:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}")
        except RequestError as error:
            context.abort(error.code, str(error))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in self._signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signature_map)
        return response


def _undecodable_item(image_bytes):
    """``image_bytes[i]: why`` for the first item that does not decode, None if all do.

    The signature names the item of a failed format or size check, but a file with a
    good header and bad data (truncated) fails in TensorFlow's decoder, which names
    none. The items before it passed the signature's size check: decoding them here is
    bounded by its ``max_pixels``.
    """
    for index, data in enumerate(image_bytes):
        try:
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except tf.errors.OpError as error:
            return f"image_bytes[{index}]: {pipeline.op_error_line(error.message)}"
    return None


# TensorFlow's error codes are gRPC's status codes: tf.errors.INVALID_ARGUMENT == 3 == INVALID_ARGUMENT.
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def serve(model_base_path, port=DEFAULTS.port, host=DEFAULTS.host, model_name=None,
          max_batch_size=DEFAULTS.max_batch_size, max_message_mb=DEFAULTS.max_message_mb,
          max_workers=DEFAULTS.max_workers, max_concurrent_rpcs=DEFAULT_MAX_CONCURRENT_RPCS):
    """Starts the server; returns ``(server, port)``, the bound port (``port=0`` picks a free one).

    Args:
      model_base_path: folder of numbered SavedModel versions; the highest is served.
      port, host: where to listen; loopback by default.
      model_name: the name requests give; default the last folder name of the base path.
      max_batch_size: largest batch accepted (INVALID_ARGUMENT above it).
      max_message_mb: largest request and response, in MiB.
      max_workers: threads answering requests.
      max_concurrent_rpcs: requests in flight at most; more get RESOURCE_EXHAUSTED.

    Stop it with ``server.stop(grace)``.
    """
    model_name = model_name or os.path.basename(os.path.normpath(model_base_path))
    service = PredictionService(model_base_path, model_name, max_batch_size)
    max_bytes = max_message_mb * 1024 * 1024
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_workers), maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    bound_port = server.add_insecure_port(f"{host}:{port}")
    if not bound_port:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return server, bound_port


def define_flags():
    """The command line's flags; defined only when run as a program, so importing stays flag-free."""
    flags.DEFINE_string("model_base_path", None, "Folder of numbered SavedModel versions.")
    flags.DEFINE_string("model_name", None, "Model name; default: the last folder name of --model_base_path.")
    config_flags.define(config_lib.ServerConfig)
    flags.mark_flag_as_required("model_base_path")


def main(argv):
    options = config_flags.options(config_lib.ServerConfig, argv)
    FLAGS = flags.FLAGS
    try:
        server, port = serve(FLAGS.model_base_path, model_name=FLAGS.model_name, **dataclasses.asdict(options))
    except (OSError, ValueError) as error:  # no model to serve, not a SavedModel, a port in use
        sys.exit(f"error: {str(error).strip().splitlines()[0]}")
    print(f"serving {FLAGS.model_base_path} on {options.host}:{port}", flush=True)  # the line scripts wait for
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=1.0)


if __name__ == "__main__":
    define_flags()
    app.run(main)
