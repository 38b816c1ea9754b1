"""Find a person across a camera network: gallery search on Milvus with the exported embedder.

The question RGB-infrared re-ID answers is "here is a person seen at night by an IR
camera: where do they appear in the daytime RGB footage?". ``index`` embeds a gallery
(the Eq. 17 embedder of :mod:`jsia_tf.export`) into a Milvus collection; ``query``
embeds query images and asks Milvus for their nearest gallery images, filtered by camera,
modality and time in Milvus's own filter expressions::

  python -m jsia_tf.search index --model=EXPORT_DIR --images=DIR|LIST.csv|DATASET_ROOT \\
      [--dataset=sysu|regdb [--trial=1]] [--db=gallery.db | --milvus_uri=http://host:19530] \\
      [--server=HOST:8500 [--served_model=jsia]] [--collection=gallery] [--batch_size=32] [--reindex]
  python -m jsia_tf.search query --model=EXPORT_DIR --images=FILE[,FILE...] --top_k=10 \\
      --output_json=OUT.json [--db=... | --milvus_uri=...] [--modality=ir] [--cameras=1,2] \\
      [--other_modality=true] [--time_window=START,END] [--same_room=3:2] [--sheet=OUT.png]

Storage: ``--db=PATH`` (default ``gallery.db``) is Milvus Lite, embedded in the process;
``--milvus_uri=URI`` is a Milvus server or cluster (docs/DISTRIBUTED.md). Both go through
the same ``pymilvus.MilvusClient`` calls; nothing else changes.

Embeddings: the SavedModel of ``--model`` (a version folder, or the export folder whose
highest version is taken) in this process, or TF Serving over gRPC with ``--server``
(:class:`jsia_tf.serving.client.EmbeddingClient`). Either way the files' bytes go to the
``embed_encoded`` signature, which decodes and preprocesses them as training did.

What ``index`` reads (``--images``):

- a folder: every BMP/JPEG/PNG file under it. The camera is the number of a ``cam<N>``
  folder on the path (SYSU-MM01's naming; 0 if none), the modality ``ir`` for the
  ``--ir_cameras`` (default SYSU-MM01's 3, 6), ``rgb`` for another known camera, else
  ``--modality``; the person is not known (-1).
- a ``.csv`` list with a header: ``path`` (relative to the list's folder) and any of
  ``camera``, ``modality``, ``person``, ``frame``, ``time``.
- with ``--dataset``: the test split of a SYSU-MM01 or RegDB layout (real or synthetic),
  read by :mod:`jsia_tf.data` with its cameras, persons and image positions (``frame``).

A record holds the vector, the absolute path, camera, modality, person (-1 unknown),
frame (position in its folder, -1 unknown) and time (unix seconds: the list's, else the
file's modification time). Its primary key is a hash of the path: indexing a file again
replaces its record (upsert), and an interrupted index resumes where it stopped, since
files already in the collection are skipped (``--reindex`` embeds them again). A file
that cannot be read or decoded is skipped, named and counted. The collection records
the model's fingerprint (a hash of the export's metadata document) and embedding size:
indexing into, or querying, a collection made by another model is an error.

``query`` prints each query's matches (rank, score, camera, path), writes them to
``--output_json`` (``{"collection", "model", "queries": [{"path", "camera", "modality",
"filter", "matches": [{"path", "score", "camera", "modality", "person", "frame",
"time"}]}]}``, best first, ``score`` the cosine similarity) and draws a contact sheet
(``--sheet``, default beside the JSON): each query (blue) and its matches, green for the
query's person, red for another, white where a person is not known. A query image that
is in the collection takes its camera, modality and person from its record; another
takes its camera from its path and its modality from ``--modality``. The filters:
``--cameras``, the other modality only (``--other_modality``, default on: IR -> RGB),
``--time_window`` and ``--same_room``, the IR cameras whose room an RGB camera also
films, never matched with it: SYSU-MM01's protocol never matches a cam-3 query with
cam-2 images (:data:`jsia_tf.eval.protocols.SYSU_SAME_ROOM`). The query itself is never
its own match.

The index is exact (``FLAT``, cosine): the ranking is jsia_tf's brute-force cosine
ranking (tested). Milvus Lite opens a database in one process at a time: a second
process on the same ``--db`` stops with an error; concurrent indexers need a server,
where the path-derived keys make them idempotent.
"""

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys

from absl import app, flags
import grpc
import keras
import numpy as np
from PIL import Image
from pymilvus import DataType, MilvusClient, MilvusException
import tensorflow as tf

from jsia_tf import config as config_lib
from jsia_tf import config_flags, export, litert, visualize
from jsia_tf.config import MODALITIES
from jsia_tf.data import pipeline, records
from jsia_tf.eval import protocols
from jsia_tf.serving.client import EmbeddingClient

VERBS = ("index", "query")
MAX_PATH = 4096  # VARCHAR length of the path field
# Collection properties that say which embedder filled it.
FINGERPRINT, MODEL, EMBEDDING_DIM = "jsia.model_fingerprint", "jsia.model", "jsia.embedding_dim"
UNKNOWN = -1  # person, frame
NO_CAMERA = 0
RECORD_FIELDS = ("path", "camera", "modality", "person", "frame", "time")
LIST_FIELDS = RECORD_FIELDS[1:]
_CAMERA_FOLDER = re.compile(r"^cam(\d+)$")
_ID_CHUNK = 1000  # ids per "id in [...]" expression when looking records up
_NO_KEEPALIVE_MS = 2**31 - 1  # gRPC's "never"


def record_id(path):
    """The primary key of a file: the first 63 bits of the SHA-256 of its absolute path
    (a non-negative int64), so that one file always maps to one record."""
    digest = hashlib.sha256(os.path.abspath(path).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def camera_of(path):
    """The number of the last ``cam<N>`` folder on ``path``, else :data:`NO_CAMERA`."""
    numbers = [int(m.group(1)) for part in os.path.normpath(path).split(os.sep) if (m := _CAMERA_FOLDER.match(part))]
    return numbers[-1] if numbers else NO_CAMERA


def modality_of(camera, ir_cameras, default=""):
    """``ir`` for an IR camera, ``rgb`` for another known camera, ``default`` for an unknown one."""
    if camera == NO_CAMERA:
        return default
    return "ir" if camera in ir_cameras else "rgb"


# -- the images of a gallery -----------------------------------------------------------------------


def _entry(path, camera=NO_CAMERA, modality="", person=UNKNOWN, frame=UNKNOWN, time=None):
    path = os.path.abspath(path)
    if time is None:
        try:
            time = int(os.path.getmtime(path))
        except OSError:
            time = UNKNOWN  # an unreadable file is named when it is embedded
    return {"path": path, "camera": int(camera), "modality": modality, "person": int(person), "frame": int(frame),
            "time": int(time)}


def folder_images(folder, ir_cameras, modality=""):
    """Entries of every BMP/JPEG/PNG file under ``folder``, sorted by path."""
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.lower().endswith(records.IMAGE_SUFFIXES))
    return [_entry(path, camera_of(path), modality_of(camera_of(path), ir_cameras, modality)) for path in paths]


def list_images(list_file, ir_cameras, modality=""):
    """Entries of a ``.csv`` list: a header with ``path`` and any of :data:`LIST_FIELDS`."""
    folder = os.path.dirname(os.path.abspath(list_file))
    with open(list_file, newline="") as f:
        reader = csv.DictReader(f)
        unknown = sorted(set(reader.fieldnames or ()) - set(RECORD_FIELDS))
        if "path" not in (reader.fieldnames or ()) or unknown:
            raise ValueError(f"--images={list_file}: the header must name 'path' and any of {list(LIST_FIELDS)}; "
                             f"got {reader.fieldnames}")
        entries = []
        for line, row in enumerate(reader, start=2):
            try:
                fields = {key: int(row[key]) for key in ("camera", "person", "frame", "time") if row.get(key)}
            except ValueError as error:
                raise ValueError(f"{list_file}:{line}: {error}") from None
            if row.get("modality") not in (None, "", *MODALITIES):
                raise ValueError(f"{list_file}:{line}: modality {row['modality']!r}; expected one of {MODALITIES}")
            camera = fields.pop("camera", camera_of(row["path"]))
            entries.append(_entry(os.path.join(folder, row["path"]), camera,
                                  row.get("modality") or modality_of(camera, ir_cameras, modality), **fields))
    return entries


def dataset_images(name, root, trial=1):
    """Entries of the test split of a SYSU-MM01 or RegDB layout (:func:`jsia_tf.data.pipeline.load_dataset`)."""
    test = pipeline.load_dataset(name, root, trial=trial).test
    rgb_cams = protocols.RGB_CAMS[name]
    return [_entry(path, cam, "rgb" if cam in rgb_cams else "ir", pid, index)
            for path, cam, pid, index in zip(test.paths, test.cams, test.pids, test.image_index)]


# -- embedders -------------------------------------------------------------------------------------


class ImagesRefused(ValueError):
    """The embedder refused a batch (an item that is not an image, or too large)."""


class SavedModelEmbedder:
    """The ``embed_encoded`` signature of an exported SavedModel, in this process.

    Args:
      path: a version folder, or the export folder (its highest version).
    """

    def __init__(self, path):
        version_dir = path if os.path.isfile(os.path.join(path, "saved_model.pb")) else self._latest(path)
        try:
            loaded = tf.saved_model.load(version_dir)
            self._embed = loaded.signatures["embed_encoded"]
            self.metadata = json.loads(loaded.signatures["metadata"]()["metadata_json"].numpy())
        except (OSError, KeyError, tf.errors.OpError) as error:
            raise ValueError(f"--model={path}: not a jsia_tf export with 'embed_encoded' and 'metadata' signatures "
                             f"({str(error).strip().splitlines()[0]})") from None
        self.name = version_dir

    @staticmethod
    def _latest(export_dir):
        version = export.next_version(export_dir) - 1
        if not version:
            raise ValueError(f"--model={export_dir}: neither a SavedModel nor an export folder with version folders")
        return os.path.join(export_dir, str(version))

    def __call__(self, blobs):
        """float32 [N, D] embeddings of N encoded image files (bytes)."""
        try:
            return self._embed(image_bytes=tf.constant(blobs, tf.string))["embedding"].numpy()
        except tf.errors.InvalidArgumentError as error:
            raise ImagesRefused(pipeline.op_error_line(error.message)) from None


class ServingEmbedder:
    """The ``embed_encoded`` signature of a model on TF Serving (gRPC)."""

    def __init__(self, server, model):
        self._client = EmbeddingClient(server, model)
        self.metadata = self._client.metadata()
        self.name = f"{server}/{model}"

    def __call__(self, blobs):
        try:
            return self._client.embed_encoded(blobs, batch_size=len(blobs))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise ImagesRefused(error.details()) from None
            raise


def fingerprint(metadata):
    """The identity of an embedder: the SHA-256 of its export's metadata document (model
    version, training config hash, checkpoint, sizes, preprocessing)."""
    return export.config_fingerprint(metadata)


def embed_files(embedder, paths):
    """(embeddings [M, D] of the files that embed, their indices in ``paths``, [(path, why)] of the others).

    A batch is embedded in one call; if the embedder refuses it, each file alone, so that
    one bad file costs only itself.
    """
    blobs, kept, bad = [], [], []
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as f:
                blobs.append(f.read())
            kept.append(i)
        except OSError as error:
            bad.append((path, error.strerror or str(error)))
    if not blobs:
        return np.zeros((0, 0), np.float32), [], bad
    try:
        return embedder(blobs), kept, bad
    except ImagesRefused:  # one of them is bad: embed them one by one, to name it
        vectors, embedded = [], []
    for i, blob in zip(kept, blobs):
        try:
            vectors.append(embedder([blob])[0])
            embedded.append(i)
        except ImagesRefused as error:
            bad.append((paths[i], str(error)))
    return np.array(vectors, np.float32).reshape(len(vectors), -1), embedded, bad


# -- the collection --------------------------------------------------------------------------------


def connect(db=config_lib.SearchConfig.db, milvus_uri=None, must_exist=False):
    """A ``MilvusClient`` of a Milvus server (``milvus_uri``) or of the Milvus Lite database ``db``."""
    if milvus_uri:
        return MilvusClient(uri=milvus_uri)
    if not db.endswith(".db"):
        raise ValueError(f"--db={db}: a Milvus Lite database path must end with .db")
    if must_exist and not os.path.exists(db):
        raise ValueError(f"--db={db}: no such database; index a gallery first (python -m jsia_tf.search index)")
    try:
        # The embedded server refuses pymilvus's keepalive pings (every 10 s) and logs a GOAWAY
        # line for each; a loopback channel in this process has nothing to keep alive.
        return MilvusClient(uri=db, grpc_options={"grpc.keepalive_time_ms": _NO_KEEPALIVE_MS})
    except MilvusException:
        if os.path.exists(db):
            raise ValueError(f"--db={db}: cannot open it: another process has it open (Milvus Lite opens a database "
                             f"in one process at a time; concurrent indexers need a Milvus server, --milvus_uri)") from None
        raise


class Gallery:
    """A Milvus collection of gallery images made by one embedder.

    Args:
      client: a ``MilvusClient``; name: the collection; where: how the user named the
      database (for messages).
    """

    def __init__(self, client, name, where):
        self.client, self.name, self.where = client, name, where

    def create_or_check(self, model_fingerprint, model_name, dim):
        """Creates the collection (FLAT, cosine) for an embedder, or checks that it is this embedder's."""
        if self.client.has_collection(self.name):
            self.check(model_fingerprint, model_name, dim)
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH)
        schema.add_field("camera", DataType.INT64)
        schema.add_field("modality", DataType.VARCHAR, max_length=8)
        for name in ("person", "frame", "time"):
            schema.add_field(name, DataType.INT64)
        # Strong consistency: a resumed index sees every record written before it.
        self.client.create_collection(self.name, schema=schema, consistency_level="Strong",
                                      properties={FINGERPRINT: model_fingerprint, MODEL: model_name,
                                                  EMBEDDING_DIM: str(dim)})
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name="embedding", index_type="FLAT", metric_type="COSINE")
        # Not sync: waiting asks for a timestamp that Milvus Lite does not serve (its server logs a
        # traceback), and the index of an empty collection has nothing to wait for.
        self.client.create_index(self.name, index_params, sync=False)
        self.client.load_collection(self.name)

    def check(self, model_fingerprint, model_name, dim):
        """ValueError unless the collection exists and was made by this embedder."""
        if not self.client.has_collection(self.name):
            raise ValueError(f"{self.where}: no collection '{self.name}'; index a gallery first "
                             f"(python -m jsia_tf.search index)")
        properties = self.client.describe_collection(self.name).get("properties", {})
        if properties.get(FINGERPRINT) != model_fingerprint:
            raise ValueError(f"{self.where}: collection '{self.name}' was indexed with another model "
                             f"({properties.get(MODEL, '?')}, embedding size {properties.get(EMBEDDING_DIM, '?')}), "
                             f"not {model_name} (embedding size {dim}); use that model, or index into a new "
                             f"--collection")
        self.client.load_collection(self.name)  # a server searches loaded collections only

    def count(self):
        return self.client.query(self.name, filter="", output_fields=["count(*)"])[0]["count(*)"]

    def get(self, ids, fields=("id",)):
        """{id: record} of the records among ``ids``."""
        found = {}
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ", ".join(str(i) for i in ids[start:start + _ID_CHUNK])
            for row in self.client.query(self.name, filter=f"id in [{chunk}]", output_fields=list(fields)):
                found[row["id"]] = row
        return found

    def upsert(self, entries, vectors):
        self.client.upsert(self.name, [{"id": record_id(entry["path"]), "embedding": vector, **entry}
                                       for entry, vector in zip(entries, vectors)])

    def search(self, vectors, top_k, expression):
        """Per vector, its ``top_k`` records by cosine similarity among those ``expression`` keeps."""
        hits = self.client.search(self.name, data=[np.asarray(v, np.float32).tolist() for v in vectors],
                                  limit=top_k, filter=expression, anns_field="embedding",
                                  output_fields=list(RECORD_FIELDS), search_params={"metric_type": "COSINE"})
        return [[{**hit["entity"], "score": float(hit["distance"])} for hit in row] for row in hits]


@dataclasses.dataclass
class IndexSummary:
    images: int  # listed
    present: int  # already in the collection, skipped
    indexed: int  # embedded and written
    bad: list  # [(path, why)] skipped


def index_images(embedder, gallery, entries, batch_size=32, reindex=False, progress=True):
    """Embeds the files of ``entries`` and upserts their records; returns an :class:`IndexSummary`."""
    if reindex:
        todo = entries
    else:
        present = gallery.get([record_id(entry["path"]) for entry in entries])
        todo = [entry for entry in entries if record_id(entry["path"]) not in present]
    bar = keras.utils.Progbar(len(todo), unit_name="image") if progress and todo else None
    indexed, bad = 0, []
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        vectors, kept, refused = embed_files(embedder, [entry["path"] for entry in batch])
        bad += refused
        if kept:
            gallery.upsert([batch[i] for i in kept], vectors)
        indexed += len(kept)
        if bar:
            bar.add(len(batch))
    gallery.client.flush(gallery.name)
    return IndexSummary(len(entries), len(entries) - len(todo), indexed, bad)


# -- queries ---------------------------------------------------------------------------------------


def filter_expression(query_id, camera, modality, cameras=(), other_modality=True, time_window=None,
                      same_room=protocols.SYSU_SAME_ROOM):
    """The Milvus filter of one query's gallery: never itself, ``cameras`` if given, the other
    modality, inside ``time_window`` (start, end) and not a camera filming ``camera``'s room."""
    terms = [f"id != {query_id}"]
    if cameras:
        terms.append(f"camera in [{', '.join(str(c) for c in cameras)}]")
    if other_modality and modality:
        terms.append(f'modality == "{"rgb" if modality == "ir" else "ir"}"')
    if time_window:
        terms.append(f"time >= {time_window[0]} and time <= {time_window[1]}")
    if camera in same_room:
        terms.append(f"camera != {same_room[camera]}")
    return " and ".join(terms)


def search(embedder, gallery, paths, top_k, modality="ir", **filters):
    """Each query file's ``top_k`` gallery records (best first) with its filter, camera and modality.

    ``filters``: :func:`filter_expression`'s. Queries sharing a filter are searched in one call.
    """
    vectors, kept, bad = embed_files(embedder, paths)
    if bad:
        raise ValueError(f"query image {bad[0][0]}: {bad[0][1]}")
    ids = [record_id(path) for path in paths]
    known = gallery.get(ids, ("id", "camera", "modality", "person"))
    queries = []
    for path, query_id in zip(paths, ids):
        record = known.get(query_id, {"camera": camera_of(path), "modality": modality, "person": UNKNOWN})
        queries.append({"path": os.path.abspath(path), "camera": record["camera"], "modality": record["modality"],
                        "person": record["person"],
                        "filter": filter_expression(query_id, record["camera"], record["modality"], **filters)})
    for expression in dict.fromkeys(query["filter"] for query in queries):
        rows = [i for i, query in enumerate(queries) if query["filter"] == expression]
        for i, matches in zip(rows, gallery.search(vectors[rows], top_k, expression)):
            queries[i]["matches"] = matches
    return queries


def contact_sheet(queries, top_k, height, width):
    """The ranked view of :func:`search`'s result: uint8 [Q (H + 2b), (1 + top_k)(W + 2b), 3]."""
    blank = np.full((height, width, 3), 255, np.uint8)
    cells, correct = [], []
    for query in queries:
        matches = query["matches"]
        row = [litert.load_pixels(query["path"], height, width)]
        row += [litert.load_pixels(match["path"], height, width) for match in matches]
        cells.append(row + [blank] * (top_k - len(matches)))
        known = query["person"] != UNKNOWN
        correct.append([int(match["person"] == query["person"]) if known and match["person"] != UNKNOWN else UNKNOWN
                        for match in matches] + [UNKNOWN] * (top_k - len(matches)))
    return visualize.ranked_grid(np.array(cells), correct)


# -- the command line ------------------------------------------------------------------------------


def define_flags():
    """The command line's flags; defined only when run as a program. The files and the model
    are the user's; every other option is :class:`jsia_tf.config.SearchConfig`'s."""
    flags.DEFINE_string("model", None, "Exported SavedModel: a version folder or the export folder (highest version).")
    flags.DEFINE_string("server", None, "host:port of TF Serving (gRPC): embed there instead of with --model.")
    flags.DEFINE_list("images", None, "index: a folder, a .csv list or, with --dataset, a dataset root; "
                      "query: comma-separated image files.")
    flags.DEFINE_enum("dataset", None, list(protocols.PROTOCOLS), "index: --images is this dataset's root; its "
                      "test split is indexed.")
    flags.DEFINE_string("milvus_uri", None, "A Milvus server or cluster, e.g. http://host:19530 (instead of --db).")
    flags.DEFINE_enum("modality", None, list(MODALITIES), "query: the modality of query images not in the "
                      "collection (default ir); index: of images whose camera is not known.")
    flags.DEFINE_string("output_json", None, "query: where to write the matches.")
    flags.DEFINE_string("sheet", None, "query: contact sheet PNG; default OUTPUT_JSON with .png.")
    config_flags.define(config_lib.SearchConfig)


def _embedder(values, options):
    if bool(values.model) == bool(values.server):
        raise ValueError("give one of --model=EXPORT_DIR (in this process) or --server=HOST:PORT (TF Serving)")
    if values.server:
        return ServingEmbedder(values.server, options.served_model)
    return SavedModelEmbedder(values.model)


def run_index(values, options):
    if len(values.images) != 1:
        raise ValueError(f"index --images={','.join(values.images)}: expected one folder, .csv list or dataset root")
    source, ir_cameras = values.images[0], options.ir_cameras
    if values.dataset:
        entries = dataset_images(values.dataset, source, options.trial)
    elif source.endswith(".csv"):
        entries = list_images(source, ir_cameras, values.modality or "")
    elif os.path.isdir(source):
        entries = folder_images(source, ir_cameras, values.modality or "")
    else:
        raise ValueError(f"--images={source}: not a folder or a .csv list")
    if not entries:
        raise ValueError(f"--images={source}: no BMP/JPEG/PNG image")
    gallery = Gallery(connect(options.db, values.milvus_uri), options.collection, values.milvus_uri or options.db)
    embedder = _embedder(values, options)
    gallery.create_or_check(fingerprint(embedder.metadata), embedder.name, embedder.metadata["embedding_dim"])
    summary = index_images(embedder, gallery, entries, options.batch_size, options.reindex)
    for path, why in summary.bad:
        print(f"skipped {path}: {why}")
    print(f"{summary.indexed} images indexed, {summary.present} already in the collection, {len(summary.bad)} "
          f"unreadable skipped; collection '{gallery.name}' in {gallery.where} holds {gallery.count()} images")


def run_query(values, options):
    if not values.output_json:
        raise ValueError("query needs --output_json=OUT.json")
    try:
        same_room = dict(tuple(int(c) for c in pair.split(":")) for pair in options.same_room)
    except ValueError:
        raise ValueError(f"--same_room={','.join(options.same_room)}: expected QUERY_CAM:GALLERY_CAM pairs") from None
    gallery = Gallery(connect(options.db, values.milvus_uri, must_exist=True), options.collection,
                      values.milvus_uri or options.db)
    embedder = _embedder(values, options)
    model = fingerprint(embedder.metadata)
    gallery.check(model, embedder.name, embedder.metadata["embedding_dim"])
    if gallery.count() == 0:
        raise ValueError(f"{gallery.where}: collection '{gallery.name}' is empty; index a gallery first")
    queries = search(embedder, gallery, values.images, options.top_k, values.modality or "ir",
                     cameras=list(options.cameras), other_modality=options.other_modality,
                     time_window=list(options.time_window) or None, same_room=same_room)
    for query in queries:
        print(f"query {query['path']} (camera {query['camera']}, {query['modality'] or 'modality not known'}): "
              f"{query['filter']}")
        for rank, match in enumerate(query["matches"], start=1):
            print(f"  {rank:3d}  {match['score']:.4f}  cam {match['camera']}  {match['path']}")
    os.makedirs(os.path.dirname(os.path.abspath(values.output_json)), exist_ok=True)
    with open(values.output_json, "w") as f:
        json.dump({"collection": gallery.name, "model": embedder.name, "model_fingerprint": model,
                   "queries": queries}, f, indent=2)
        f.write("\n")
    sheet = values.sheet or os.path.splitext(values.output_json)[0] + ".png"
    Image.fromarray(contact_sheet(queries, options.top_k, embedder.metadata["input_height"],
                                  embedder.metadata["input_width"])).save(sheet)
    print(f"wrote {values.output_json} and {sheet}")


def main(argv):
    """``index`` or ``query``; what the user can fix is one ``error:`` line."""
    if len(argv) != 2 or argv[1] not in VERBS:
        raise app.UsageError(f"expected one verb, {' or '.join(VERBS)}; got {argv[1:]}")
    # Milvus Lite logs a traceback when it cannot open a database (the error line says why), and
    # faiss, which it imports, logs at INFO which of its builds it loaded.
    logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)
    logging.getLogger("faiss").setLevel(logging.WARNING)
    values = flags.FLAGS
    try:
        if not values.images:
            raise ValueError("--images is required")
        options = config_lib.SearchConfig(**config_flags.values(config_lib.SearchConfig))
        (run_index if argv[1] == "index" else run_query)(values, options)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        sys.exit(f"error: {where}{error.strerror or error}")
    except ValueError as error:
        sys.exit(f"error: {str(error).strip().splitlines()[0]}")
    except MilvusException as error:  # the database refused or did not answer
        where = f"--milvus_uri={values.milvus_uri}" if values.milvus_uri else f"--db={values.db}"
        sys.exit(f"error: {where}: {error.message}")
    except grpc.RpcError as error:
        details = (error.details() or "").strip().splitlines()
        sys.exit(f"error: --server={values.server}: {error.code().name}: {details[0] if details else ''}")


def run():
    """Console-script entry point (``jsia-search``)."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
