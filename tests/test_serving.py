"""Loopback serving: EmbeddingClient <-> the Predict server over an exported tiny embedder.

Two versions are exported (different weights); the server must serve version 2. All on
127.0.0.1, every call with a timeout, the server stopped at teardown.
"""

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from jsia_tf import export
from jsia_tf.serving import client as client_lib
from jsia_tf.serving.server import serve
from test_export import HEIGHT, WIDTH, encode, pixels, tiny_model

REPO = Path(__file__).resolve().parents[1]
MAX_BATCH_SIZE = 8
TIMEOUT_S = 20


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / "jsia")
    export.export_embedder(tiny_model(seed=1), base, HEIGHT, WIDTH)
    export.export_embedder(tiny_model(seed=2), base, HEIGHT, WIDTH)
    return base


@pytest.fixture(scope="module")
def reference(base_path):
    """The served version (2), loaded in-process."""
    return tf.saved_model.load(os.path.join(base_path, "2")).signatures


@pytest.fixture(scope="module")
def server_port(base_path):
    server, port = serve(base_path, port=0, max_batch_size=MAX_BATCH_SIZE)
    yield port
    server.stop(grace=None).wait(TIMEOUT_S)


@pytest.fixture(scope="module")
def client(server_port):
    with client_lib.EmbeddingClient(f"127.0.0.1:{server_port}", timeout=TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="module")
def stub(server_port):
    with grpc.insecure_channel(f"127.0.0.1:{server_port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_embeddings_equal_the_in_process_saved_model(client, reference):
    images = pixels((5, 40, 20, 3), seed=7)
    expected = reference["serving_default"](images=tf.constant(images))["embedding"].numpy()
    np.testing.assert_allclose(client.embed(images, batch_size=2), expected, atol=1e-6)


def test_mixed_sizes_and_gray_images_keep_their_order(client, reference):
    images = [pixels((32, 16, 3), seed=1), pixels((48, 24), seed=2), pixels((32, 16, 3), seed=3),
              pixels((32, 16, 1), seed=4)]
    expected = [reference["serving_default"](images=tf.constant(im.reshape(1, *im.shape[:2], -1)))["embedding"][0]
                for im in images]
    np.testing.assert_allclose(client.embed(images), np.stack(expected), atol=1e-6)


def test_embed_files_equals_the_in_process_saved_model(client, reference, tmp_path):
    paths = []
    for n, fmt in enumerate(("PNG", "BMP", "PNG")):
        paths.append(tmp_path / f"{n}.{fmt.lower()}")
        paths[-1].write_bytes(encode(pixels((40 + n, 20, 3), seed=n), fmt))
    expected = reference["embed_encoded"](image_bytes=tf.constant([p.read_bytes() for p in paths]))["embedding"]
    np.testing.assert_allclose(client.embed_files(paths, batch_size=2), expected, atol=1e-6)


def test_metadata_is_the_served_version(client, base_path):
    with open(os.path.join(base_path, "2", "assets", export.METADATA_ASSET)) as f:
        assert client.metadata() == json.load(f)
    assert client.metadata()["model_version"] == 2


def _request(inputs, model="jsia", signature="serving_default", version=None, version_label=None, output=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if version_label is not None:
        request.model_spec.version_label = version_label
    if output is not None:
        request.output_filter.append(output)
    for key, array in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
    return request


GOOD_IMAGES = np.zeros((1, 32, 16, 3), np.uint8)


@pytest.mark.parametrize("request_, code, message", [
    (_request({"images": GOOD_IMAGES}, model="other"), grpc.StatusCode.NOT_FOUND, "other"),
    (_request({"images": GOOD_IMAGES}, signature="embed"), grpc.StatusCode.NOT_FOUND, "'embed' not found"),
    (_request({"images": GOOD_IMAGES}, version=1), grpc.StatusCode.NOT_FOUND, "Specific(jsia, 1)"),
    (_request({"images": GOOD_IMAGES}, version_label="stable"), grpc.StatusCode.NOT_FOUND, "'stable'"),
    (_request({"images": GOOD_IMAGES}, output="logits"), grpc.StatusCode.INVALID_ARGUMENT, "['logits']"),
    (_request({}), grpc.StatusCode.INVALID_ARGUMENT, "Missing but required: ['images']"),
    (_request({"images": GOOD_IMAGES, "extra": GOOD_IMAGES}), grpc.StatusCode.INVALID_ARGUMENT,
     "Sent extra: ['extra']"),
    (_request({"images": GOOD_IMAGES.astype(np.float32)}), grpc.StatusCode.INVALID_ARGUMENT,
     "expects dtype uint8, got float32"),
    (_request({"images": GOOD_IMAGES[0]}), grpc.StatusCode.INVALID_ARGUMENT, "got [32, 16, 3]"),
    (_request({"images": GOOD_IMAGES[:0]}), grpc.StatusCode.INVALID_ARGUMENT, "batch size 0"),
    (_request({"images": np.zeros((MAX_BATCH_SIZE + 1, 8, 4, 3), np.uint8)}), grpc.StatusCode.INVALID_ARGUMENT,
     f"batch size {MAX_BATCH_SIZE + 1}"),
    (_request({"images": np.zeros((1, 32, 16, 2), np.uint8)}), grpc.StatusCode.INVALID_ARGUMENT,
     "expected 1 (gray) or 3 (RGB) channels"),
    (_request({"image_bytes": np.array([encode(pixels((8, 4, 3)), "PNG"), b"not an image"], dtype=object)},
              signature="embed_encoded"),
     grpc.StatusCode.INVALID_ARGUMENT, "image_bytes[1]: not a BMP, GIF, JPEG or PNG file"),
    (_request({"image_bytes": np.array([encode(pixels((8, 4, 3)), "PNG"), encode(pixels((8, 4, 3)), "PNG")[:60]],
                                       dtype=object)}, signature="embed_encoded"),
     grpc.StatusCode.INVALID_ARGUMENT, "image_bytes[1]: Invalid PNG data, size 60"),
], ids=["model", "signature", "version", "version_label", "output_filter", "missing", "extra", "dtype", "rank", "empty", "too_large", "channels",
        "undecodable", "truncated"])
def test_bad_requests_get_their_status_and_the_server_goes_on(stub, client, request_, code, message):
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request_, timeout=TIMEOUT_S)
    assert error.value.code() == code
    assert message in error.value.details()
    assert client.embed(GOOD_IMAGES).shape == (1, 32)


def test_concurrent_clients(server_port, reference):
    images = pixels((1, 16, 8, 3), seed=9)
    expected = reference["serving_default"](images=tf.constant(images))["embedding"].numpy()
    num_clients, requests_per_client = 8, 50

    def run_client(_):
        with client_lib.EmbeddingClient(f"127.0.0.1:{server_port}", timeout=TIMEOUT_S) as client:
            return [np.abs(client.embed(images) - expected).max() for _ in range(requests_per_client)]

    with concurrent.futures.ThreadPoolExecutor(num_clients) as pool:
        errors = [error for result in pool.map(run_client, range(num_clients)) for error in result]
    assert len(errors) == num_clients * requests_per_client
    assert max(errors) <= 1e-6


def test_get_model_metadata_lists_the_signatures(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "jsia"
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=TIMEOUT_S)
    assert response.model_spec.version.value == 2
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    # As TF Serving, every SignatureDef of the MetaGraph, the SavedModel's init op too.
    assert set(signatures.signature_def) == {"serving_default", "embed_encoded", "metadata", "__saved_model_init_op"}
    images = signatures.signature_def["serving_default"].inputs["images"]
    assert images.dtype == tf.uint8.as_datatype_enum and len(images.tensor_shape.dim) == 4
    assert signatures.signature_def["embed_encoded"].inputs["image_bytes"].dtype == tf.string.as_datatype_enum


def test_client_retries_only_unavailable(server_port, monkeypatch):
    sleeps = []
    monkeypatch.setattr(client_lib.time, "sleep", sleeps.append)
    with client_lib.EmbeddingClient("127.0.0.1:1", timeout=2, retries=2) as client:  # nothing listens there
        with pytest.raises(grpc.RpcError) as error:
            client.embed(GOOD_IMAGES)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sleeps == [client_lib.BACKOFF_S, 2 * client_lib.BACKOFF_S]  # 3 attempts, exponential backoff
    sleeps.clear()
    with client_lib.EmbeddingClient(f"127.0.0.1:{server_port}", model="other", retries=2) as client:
        with pytest.raises(grpc.RpcError) as error:
            client.embed(GOOD_IMAGES)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert sleeps == []  # not retried


def test_client_refuses_bad_images(client):
    with pytest.raises(TypeError, match="image 0: expected uint8"):
        client.embed(np.zeros((1, 8, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"image 1: .* got shape \(8, 4, 2\)"):
        client.embed([np.zeros((8, 4, 3), np.uint8), np.zeros((8, 4, 2), np.uint8)])


def test_top_k_ranks_by_cosine_similarity():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    indices, scores = client_lib.top_k(np.array([[1.0, 0.1]]), gallery, k=2)
    assert indices.tolist() == [[0, 2]]
    np.testing.assert_allclose(scores, [[1.0 / np.sqrt(1.01), 1.1 / np.sqrt(2.02)]])


def test_command_lines_end_to_end(base_path, tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for n in range(3):
        (gallery / f"{n}.png").write_bytes(encode(pixels((32, 16, 3), seed=20 + n), "PNG"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jsia_tf.serving.server", f"--model_base_path={base_path}", "--port=0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first_line = []
        reader = threading.Thread(target=lambda: first_line.append(server.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=60)
        assert first_line and first_line[0].startswith("serving "), "the server did not start"
        address = first_line[0].split()[-1]
        result = subprocess.run(
            [sys.executable, "-m", "jsia_tf.serving.client", f"--server={address}", "--model=jsia",
             f"--images={gallery / '1.png'}", f"--gallery_dir={gallery}", "--top_k=2"],
            cwd=REPO, capture_output=True, text=True, timeout=60)
        (tmp_path / "junk.png").write_text("not an image")
        junk, missing = (subprocess.run(
            [sys.executable, "-m", "jsia_tf.serving.client", f"--server={address}", f"--images={image}"],
            cwd=REPO, capture_output=True, text=True, timeout=60) for image in (tmp_path / "junk.png",
                                                                                tmp_path / "missing.png"))
    finally:
        server.terminate()
        server.wait(timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"query {gallery / '1.png'}"
    assert lines[1].split() == ["1", "1.0000", str(gallery / "1.png")]  # the query itself ranks first
    assert len(lines) == 3
    # What the user can fix is one line, not a traceback.
    assert _error_line(junk) == (f"error: --server={address}: INVALID_ARGUMENT: assertion failed: "
                                 "[image_bytes[0]: not a BMP, GIF, JPEG or PNG file]")
    assert _error_line(missing) == f"error: {tmp_path / 'missing.png'}: No such file or directory"


def _error_line(result):
    """The one ``error:`` line a command ended with (and no traceback)."""
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


def test_command_lines_answer_no_server_and_no_model_in_one_line(tmp_path):
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    (tmp_path / "a.png").write_bytes(encode(pixels((32, 16, 3)), "PNG"))
    no_server = subprocess.run(
        [sys.executable, "-m", "jsia_tf.serving.client", f"--server=127.0.0.1:{port}", f"--images={tmp_path / 'a.png'}",
         "--timeout=5"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert _error_line(no_server).startswith(f"error: --server=127.0.0.1:{port}: UNAVAILABLE: ")
    (tmp_path / "empty").mkdir()
    no_model = subprocess.run(
        [sys.executable, "-m", "jsia_tf.serving.server", f"--model_base_path={tmp_path / 'empty'}", "--port=0"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert _error_line(no_model) == f"error: {tmp_path / 'empty'}: no version folder (1/, 2/, ...) to serve"


def test_models_config_parses_as_a_model_server_config():
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((REPO / "serving" / "models.config").read_text(), config)
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("jsia", "/models/jsia", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1
