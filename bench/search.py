"""Gallery search speed: jsia_tf.search on Milvus Lite against embedding alone and numpy brute force.

  python bench/search.py [--sizes=10000,100000] [--queries=200] [--synthetic_ids=50] \\
      [--hnsw_sizes=10000,100000] [--noindexing]

1. Indexing, end to end: module F of the 64 x 32 preset (ResNet-18 widths 16-128, 64x32,
   random weights: timing does not depend on them) exported with jsia_tf.export, the test
   split of a synthetic SYSU-MM01-layout dataset of ``--synthetic_ids`` persons indexed by
   :func:`jsia_tf.search.index_images` into a fresh Milvus Lite collection (read, embed,
   upsert, flush), against :func:`jsia_tf.search.embed_files` alone on the same files,
   taking turns three times (medians).
2. At each of ``--sizes`` random unit vectors of the model's embedding size, with the
   fields of a record (camera 1-6, modality by camera): upserts/s (batches of 5,000
   records through :meth:`Gallery.upsert`, then flush), then ``--queries`` single-vector
   top-10 searches with the filter of an IR query from camera 3 (:func:`filter_expression`:
   RGB images, not camera 2), p50 / p99 latency; the memory the collection added to this
   process (RSS, Milvus Lite runs in it) and its size on disk. Beside it, numpy brute
   force on the same float32 matrix with the same filter as a mask (matrix product,
   argpartition, sort of the top 10), and how often the two top-10 lists are equal.
3. At each of ``--hnsw_sizes``, an HNSW collection (M 16, efConstruction 200, ef 64; Milvus
   Lite builds it with faiss) of the same vectors: recall@10 of its top-10 against the
   exact (FLAT) one on the same queries, with the filter and without, and its latency.
   Random vectors are the hard case for an approximate index (no clusters to follow).
"""

import os
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags
from pymilvus import DataType, MilvusClient

from jsia_tf import config, export, search
from jsia_tf.data import synthetic
from jsia_tf.models import alignment, backbone

_SIZES = flags.DEFINE_list("sizes", ["10000", "100000"], "Collection sizes (vectors).")
_INDEXING = flags.DEFINE_bool("indexing", True, "Time indexing images end to end (part 1).")
_HNSW_SIZES = flags.DEFINE_list("hnsw_sizes", ["10000", "100000"], "Sizes with an HNSW collection too.")
_QUERIES = flags.DEFINE_integer("queries", 200, "Timed single-vector searches per size.", lower_bound=2)
_SYNTHETIC_IDS = flags.DEFINE_integer("synthetic_ids", 50, "Persons of the indexed synthetic dataset.")

# The 64 x 32 preset's module F (configs/small.flags).
HEIGHT, WIDTH, WIDTHS = 64, 32, (16, 32, 64, 128)
_NUM_CLASSES = 2  # only the embedding path is exported
TOP_K = 10
INSERT_BATCH = 5000
QUERY_CAMERA = 3
HNSW = {"M": 16, "efConstruction": 200}
HNSW_EF = 64


def rss_bytes():
    """This process's resident memory (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def disk_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def demo_export(folder):
    parts = backbone.build_backbone("resnet18", weights="none", widths=WIDTHS)
    model = alignment.FeatureAlignment(parts.set_level_encoder, parts.instance_level_encoder, _NUM_CLASSES,
                                       num_regions=config.DEFAULT_NUM_REGIONS, gray_input=True)
    model(np.zeros((1, HEIGHT, WIDTH, 3), np.float32))
    return export.export_embedder(model, folder, HEIGHT, WIDTH)


def bench_indexing(embedder, work, rounds=3):
    """Embedding alone and index end to end on the same files, taking turns ``rounds`` times
    (each index into a fresh collection): the medians, so that load from elsewhere hits both alike."""
    data = os.path.join(work, "sysu")
    synthetic.generate(data, "sysu", _SYNTHETIC_IDS.value, seed=0, height=HEIGHT, width=WIDTH)
    entries = search.dataset_images("sysu", data)
    paths = [entry["path"] for entry in entries]
    search.embed_files(embedder, paths[:32])  # warm-up: tracing
    client = search.connect(os.path.join(work, "index.db"))
    embed_s, index_s = [], []
    for round_ in range(rounds):
        start = time.perf_counter()
        for i in range(0, len(paths), 32):
            search.embed_files(embedder, paths[i:i + 32])
        embed_s.append(time.perf_counter() - start)
        gallery = search.Gallery(client, f"round{round_}", "index.db")
        gallery.create_or_check(search.fingerprint(embedder.metadata), embedder.name,
                                embedder.metadata["embedding_dim"])
        start = time.perf_counter()
        search.index_images(embedder, gallery, entries, batch_size=32, progress=False)
        index_s.append(time.perf_counter() - start)
    client.close()
    embed_s, index_s = np.median(embed_s), np.median(index_s)
    print(f"indexing {len(paths)} images ({HEIGHT}x{WIDTH} JPEG, batches of 32, median of {rounds} rounds): "
          f"embedding alone {len(paths) / embed_s:.0f} images/s, index end to end {len(paths) / index_s:.0f} "
          f"images/s (x{embed_s / index_s:.2f})")


def random_records(size, dim, rng):
    vectors = rng.standard_normal((size, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cameras = rng.integers(1, 7, size)
    entries = [{"path": f"/gallery/{i}.jpg", "camera": int(c), "modality": search.modality_of(c, (3, 6)),
                "person": search.UNKNOWN, "frame": search.UNKNOWN, "time": i} for i, c in enumerate(cameras)]
    return vectors, cameras, entries


def hnsw_collection(client, name, dim):
    """A collection of search's schema whose embedding has an HNSW index."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    for field in ("camera", "time"):
        schema.add_field(field, DataType.INT64)
    schema.add_field("modality", DataType.VARCHAR, max_length=8)
    client.create_collection(name, schema=schema, consistency_level="Strong")
    index_params = client.prepare_index_params()
    index_params.add_index(field_name="embedding", index_type="HNSW", metric_type="COSINE", params=HNSW)
    client.create_index(name, index_params, sync=False)
    client.load_collection(name)


def timed(call, queries):
    """(results, seconds [Q]) of ``call(q)`` for each query, after one warm-up call."""
    call(queries[0])
    results, seconds = [], []
    for query in queries:
        start = time.perf_counter()
        results.append(call(query))
        seconds.append(time.perf_counter() - start)
    return results, np.array(seconds)


def row(name, size, insert_s, seconds, memory, disk):
    """A table row; None (not measured) is "-"."""
    insert, memory, disk = (f"{value:,.0f}" if value is not None else "-" for value in (
        size / insert_s if insert_s else None, memory and memory / 2**20, disk and disk / 2**20))
    rate = 1 / seconds.mean()
    rate = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2f}"
    print(f"| {name} | {size:,} | {insert} | {rate} | {1e3 * np.percentile(seconds, 50):.2f} | "
          f"{1e3 * np.percentile(seconds, 99):.2f} | {memory} | {disk} |", flush=True)


def bench_size(size, dim, work, fingerprint, hnsw):
    rng = np.random.default_rng(size)
    vectors, cameras, entries = random_records(size, dim, rng)
    queries = vectors[rng.choice(size, _QUERIES.value, replace=False)] + 0.05 * rng.standard_normal(
        (_QUERIES.value, dim), dtype=np.float32)
    expression = search.filter_expression(-1, QUERY_CAMERA, "ir")
    allowed = np.isin(cameras, (1, 2, 4, 5)) & (cameras != 2)  # the same filter as a mask

    db = os.path.join(work, f"vectors_{size}.db")
    before = rss_bytes()
    gallery = search.Gallery(search.connect(db), "gallery", db)
    gallery.create_or_check(fingerprint, "bench", dim)
    start = time.perf_counter()
    for i in range(0, size, INSERT_BATCH):
        gallery.upsert(entries[i:i + INSERT_BATCH], vectors[i:i + INSERT_BATCH])
    gallery.client.flush(gallery.name)
    insert_s = time.perf_counter() - start
    exact, seconds = timed(lambda q: gallery.search([q], TOP_K, expression)[0], queries)
    row("Milvus Lite FLAT", size, insert_s, seconds, rss_bytes() - before, disk_bytes(db))

    def brute_force(query):
        scores = np.where(allowed, vectors @ query, -np.inf)  # [N]
        top = np.argpartition(-scores, TOP_K)[:TOP_K]
        return top[np.argsort(-scores[top])]

    ranked, seconds = timed(brute_force, queries)
    row("numpy brute force", size, None, seconds, vectors.nbytes, None)
    same = sum([m["path"] for m in want] == [entries[i]["path"] for i in got] for want, got in zip(exact, ranked))
    print(f"|  | FLAT's top-10 equals numpy's in {same} of {len(queries)} queries |  |  |  |  |  |  |")

    if hnsw:
        client = gallery.client
        hnsw_collection(client, "hnsw", dim)
        start = time.perf_counter()
        for i in range(0, size, INSERT_BATCH):
            client.insert("hnsw", [{"id": search.record_id(e["path"]), "embedding": v, "camera": e["camera"],
                                    "modality": e["modality"], "time": e["time"]}
                                   for e, v in zip(entries[i:i + INSERT_BATCH], vectors[i:i + INSERT_BATCH])])
        client.flush("hnsw")
        # Milvus Lite builds segment indexes in a background thread after a flush, and searches a
        # segment without one exhaustively: loading again builds them all before it returns.
        client.release_collection("hnsw")
        client.load_collection("hnsw")
        insert_s = time.perf_counter() - start
        search_hnsw = lambda q, where: client.search(  # noqa: E731
            "hnsw", data=[q.tolist()], limit=TOP_K, filter=where, anns_field="embedding",
            search_params={"metric_type": "COSINE", "params": {"ef": HNSW_EF}})[0]
        # With the filter (half the gallery) and without: a filter changes what HNSW's graph walk reaches.
        for label, where in (("filter", expression), ("no filter", "")):
            if not where:
                exact, seconds = timed(lambda q: gallery.search([q], TOP_K, where)[0], queries)  # noqa: B023
                row(f"Milvus Lite FLAT, {label}", size, None, seconds, None, None)
            approximate, seconds = timed(lambda q: search_hnsw(q, where), queries)  # noqa: B023
            recall = np.mean([len({search.record_id(m["path"]) for m in want} & {hit["id"] for hit in got}) / TOP_K
                              for want, got in zip(exact, approximate)])
            row(f"Milvus Lite HNSW, {label} (recall@10 {recall:.3f})", size, insert_s if where else None, seconds,
                None, disk_bytes(os.path.join(db, "collections", "hnsw")) if where else None)  # Lite's layout
    gallery.client.close()
    shutil.rmtree(db)


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as work:
        embedder = search.SavedModelEmbedder(demo_export(os.path.join(work, "models")))
        if _INDEXING.value:
            bench_indexing(embedder, work)
        dim = embedder.metadata["embedding_dim"]
        print(f"\n{dim}-d unit vectors, top-{TOP_K} with the filter of a camera-{QUERY_CAMERA} IR query, "
              f"{_QUERIES.value} single-vector queries; memory: RSS added (numpy: the matrix)")
        print("| index | vectors | inserts/s | queries/s | p50 (ms) | p99 (ms) | memory (MiB) | disk (MiB) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for size in map(int, _SIZES.value):
            bench_size(size, dim, work, search.fingerprint(embedder.metadata), str(size) in _HNSW_SIZES.value)


if __name__ == "__main__":
    app.run(main)
