"""gRPC client of the exported re-ID embedder, served by TensorFlow Serving (or jsia_tf.serving.server).

  python -m jsia_tf.serving.client --server=HOST:PORT [--model=jsia] --images=A.jpg,B.png \\
      [--gallery_dir=DIR --top_k=10]

prints the embeddings' count and dimension or, with ``--gallery_dir``, each query's
``top_k`` gallery images (every BMP/JPEG/PNG file under DIR) by cosine similarity. A
missing file, an image the server refuses or a server that does not answer is one
``error:`` line.

In Python::

  with EmbeddingClient("localhost:8500") as client:
      features = client.embed(images)       # uint8 [N, H, W, C] or a list of [H, W(, C)]
      features = client.embed_files(paths)  # the files' bytes, decoded by the server
      client.metadata()                     # embedding_dim, input size, preprocessing, ...
"""

import json
import os
import sys
import time

import grpc
import numpy as np
import tensorflow as tf
from absl import app, flags
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from jsia_tf import config as config_lib
from jsia_tf import config_flags
from jsia_tf.eval.metrics import cosine_similarity

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png")
DEFAULTS = config_lib.ClientConfig()  # the command line's
DEFAULT_MAX_MESSAGE_MB = config_lib.default(config_lib.ServerConfig, "max_message_mb")  # the server's
# Backoff before retry k (0-based) on UNAVAILABLE: BACKOFF_S * 2**k seconds.
BACKOFF_S = 0.1


class EmbeddingClient:
    """Embeddings from a Predict server (TF Serving's gRPC API).

    Args:
      server: "host:port".
      model: the model name of the server's config.
      signature: the signature :meth:`embed` calls (uint8 images in, ``embedding`` out).
      timeout: seconds allowed for each request.
      max_message_mb: largest request and response, in MiB (gRPC's default, 4, is too
        small for a batch of 64 images of 256x128).
      retries: attempts after the first one when the server is UNAVAILABLE (starting,
        restarting); every other error is raised at once.
    """

    def __init__(self, server, model=DEFAULTS.model, signature="serving_default", timeout=DEFAULTS.timeout,
                 max_message_mb=DEFAULT_MAX_MESSAGE_MB, retries=3):
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"EmbeddingClient retries={retries!r}: expected an integer >= 0")
        max_bytes = max_message_mb * 1024 * 1024
        self.model = model
        self.signature = signature
        self.timeout = timeout
        self.retries = retries
        self._channel = grpc.insecure_channel(server, options=[
            ("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def predict(self, signature, inputs):
        """One Predict call: inputs {key: np.ndarray} -> outputs {key: np.ndarray}.

        Raises:
          grpc.RpcError: the server's status (after ``retries`` retries if UNAVAILABLE).
        """
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = signature
        for key, array in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
        for attempt in range(self.retries + 1):
            try:
                response = self._stub.Predict(request, timeout=self.timeout)
                return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise
                time.sleep(BACKOFF_S * 2 ** attempt)

    def embed(self, images, batch_size=32):
        """Embeddings of uint8 images, L2-normalised float32 [N, D], in input order.

        Args:
          images: uint8 [N, H, W, C], or a sequence of uint8 [H, W, C] / [H, W] (gray)
            images of any sizes; C is 1 or 3. A request holds up to ``batch_size``
            consecutive images of one shape.
        """
        images = [_as_image(image, n) for n, image in enumerate(images)]
        batches = []
        for image in images:
            if batches and len(batches[-1]) < batch_size and batches[-1][0].shape == image.shape:
                batches[-1].append(image)
            else:
                batches.append([image])
        return self._embeddings([self.predict(self.signature, {"images": np.stack(batch)}) for batch in batches])

    def embed_encoded(self, encoded, batch_size=32):
        """Embeddings [N, D] of BMP/JPEG/PNG files given as bytes, decoded by the server."""
        encoded = list(encoded)
        return self._embeddings([
            self.predict("embed_encoded", {"image_bytes": np.array(encoded[start:start + batch_size], dtype=object)})
            for start in range(0, len(encoded), batch_size)])

    def embed_files(self, paths, batch_size=DEFAULTS.batch_size):
        """Embeddings [N, D] of image files (their bytes are sent; the server decodes them)."""
        blobs = []
        for path in paths:
            with open(path, "rb") as f:
                blobs.append(f.read())
        return self.embed_encoded(blobs, batch_size)

    def metadata(self):
        """The export's metadata document (``metadata`` signature) as a dict."""
        outputs = self.predict("metadata", {})
        return json.loads(outputs["metadata_json"].item())

    @staticmethod
    def _embeddings(outputs):
        if not outputs:
            raise ValueError("no images to embed")
        return np.concatenate([output["embedding"] for output in outputs])


def _as_image(image, index):
    """uint8 [H, W, C] from [H, W, C] or [H, W]; TypeError/ValueError name the image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"image {index}: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]  # gray
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"image {index}: expected [H, W], [H, W, 1] or [H, W, 3], got shape {image.shape}")
    return image


def gallery_files(gallery_dir):
    """Every BMP/JPEG/PNG file under ``gallery_dir``, sorted."""
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(gallery_dir) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f"--gallery_dir={gallery_dir}: no {'/'.join(IMAGE_EXTENSIONS)} file")
    return paths


def top_k(query_features, gallery_features, k):
    """(indices [Q, k'], scores [Q, k']) of each query's most cosine-similar gallery rows, k' = min(k, G)."""
    similarity = cosine_similarity(query_features, gallery_features)  # [Q, G]
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]  # ties keep gallery order
    return order, np.take_along_axis(similarity, order, axis=1)


def define_flags():
    """The command line's flags; defined only when run as a program, so importing stays flag-free."""
    flags.DEFINE_string("server", None, "host:port of the Predict server.")
    flags.DEFINE_list("images", None, "Comma-separated query image files.")
    flags.DEFINE_string("gallery_dir", None, "Rank every BMP/JPEG/PNG file under this folder for each query.")
    config_flags.define(config_lib.ClientConfig)
    flags.mark_flags_as_required(["server", "images"])


def main(argv):
    """:func:`rank`; what the user can fix (a missing file, a refused image, no server) is one line."""
    options = config_flags.options(config_lib.ClientConfig, argv)
    try:
        rank(flags.FLAGS.server, flags.FLAGS.images, flags.FLAGS.gallery_dir, options)
    except OSError as error:  # a missing image file, an empty --gallery_dir
        where = f"{error.filename}: " if error.filename else ""
        sys.exit(f"error: {where}{error.strerror or error}")
    except grpc.RpcError as error:
        details = (error.details() or "").strip().splitlines()
        sys.exit(f"error: --server={flags.FLAGS.server}: {error.code().name}: {details[0] if details else ''}")


def rank(server, images, gallery_dir, options):
    """Prints the embeddings of ``images``, or each one's ``options.top_k`` of ``gallery_dir``
    (``options``: a :class:`jsia_tf.config.ClientConfig`)."""
    with EmbeddingClient(server, options.model, timeout=options.timeout) as client:
        queries = client.embed_files(images, options.batch_size)
        if not gallery_dir:
            print(f"{queries.shape[0]} embeddings of dimension {queries.shape[1]}")
            return
        gallery = gallery_files(gallery_dir)
        indices, scores = top_k(queries, client.embed_files(gallery, options.batch_size), options.top_k)
    for query, row, row_scores in zip(images, indices, scores):
        print(f"query {query}")
        for rank, (index, score) in enumerate(zip(row, row_scores), start=1):
            print(f"  {rank:3d}  {score:.4f}  {gallery[index]}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
