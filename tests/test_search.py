"""Gallery search on Milvus Lite (jsia_tf.search): index + query end to end with an exported embedder.

A tiny ResNet-18 module F (tests/test_export.py: D = 32, 32x16) with its BN-neck fitted
to the training images, as tests/test_litert.py does (otherwise every embedding points
nearly the same way and the ranking is near ties), exported as a SavedModel; a synthetic
SYSU-MM01-layout dataset of 10 persons whose test split (2 persons, 91 images in the 6
cameras) is the gallery. Scores: Milvus's cosine and numpy's on the same float32
embeddings agree within 1e-5.
"""

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from jsia_tf import config, export, search
from jsia_tf.data import pipeline, synthetic
from jsia_tf.eval import protocols
from jsia_tf.serving.client import top_k
from jsia_tf.serving.server import serve
from test_export import HEIGHT, WIDTH, fitted_tiny_model
from conftest import REPO

SYNTHETIC_IDS = 10
TOP_K = 10
SCORE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("search") / "sysu"
    synthetic.generate(root, "sysu", SYNTHETIC_IDS, seed=0, height=2 * HEIGHT, width=2 * WIDTH)
    return str(root)


@pytest.fixture(scope="module")
def exports(data_dir, tmp_path_factory):
    """Two export folders of two different models (seeds 0 and 1)."""
    dataset = pipeline.load_dataset("sysu", data_dir)
    folders = []
    for seed in (0, 1):
        base = str(tmp_path_factory.mktemp("models") / "jsia")
        export.export_embedder(fitted_tiny_model(dataset, seed), base, HEIGHT, WIDTH,
                               metadata={"training_config_sha256": export.config_fingerprint({"seed": seed})})
        folders.append(base)
    return folders


@pytest.fixture(scope="module")
def embedder(exports):
    return search.SavedModelEmbedder(exports[0])


@pytest.fixture(scope="module")
def entries(data_dir):
    return search.dataset_images("sysu", data_dir)


def open_gallery(db, embedder, name="gallery"):
    gallery = search.Gallery(search.connect(str(db)), name, str(db))
    gallery.create_or_check(search.fingerprint(embedder.metadata), embedder.name, embedder.metadata["embedding_dim"])
    return gallery


@pytest.fixture(scope="module")
def gallery(embedder, entries, tmp_path_factory):
    gallery = open_gallery(tmp_path_factory.mktemp("db") / "gallery.db", embedder)
    summary = search.index_images(embedder, gallery, entries, batch_size=16, progress=False)
    assert (summary.indexed, summary.present, summary.bad) == (len(entries), 0, [])
    yield gallery
    gallery.client.close()


def test_records_hold_the_dataset_metadata(gallery, entries):
    assert gallery.count() == len(entries) == 91
    ids = [search.record_id(entry["path"]) for entry in entries]
    stored = gallery.get(ids, ("id",) + search.RECORD_FIELDS)
    for entry, record_id in zip(entries, ids):
        assert {key: stored[record_id][key] for key in search.RECORD_FIELDS} == entry
    cams = {entry["camera"]: entry["modality"] for entry in entries}
    assert cams == {1: "rgb", 2: "rgb", 3: "ir", 4: "rgb", 5: "rgb", 6: "ir"}
    assert {entry["person"] for entry in entries} == {3, 4}


def test_flat_top_k_equals_the_brute_force_ranking(embedder, gallery, entries):
    """IR queries of both IR cameras against the RGB images, SYSU-MM01's same-room rule applied."""
    paths = np.array([entry["path"] for entry in entries])
    cams = np.array([entry["camera"] for entry in entries])
    features, kept, bad = search.embed_files(embedder, list(paths))
    assert bad == [] and kept == list(range(len(paths)))
    query_rows = np.concatenate([np.flatnonzero(cams == 3)[:3], np.flatnonzero(cams == 6)[:3]])
    results = search.search(embedder, gallery, list(paths[query_rows]), TOP_K)
    for row, result in zip(query_rows, results):
        allowed = np.isin(cams, protocols.SYSU_RGB_CAMS) & (cams != protocols.SYSU_SAME_ROOM.get(cams[row], 0))
        gallery_rows = np.flatnonzero(allowed)
        order, scores = top_k(features[row:row + 1], features[gallery_rows], TOP_K)
        assert [match["path"] for match in result["matches"]] == list(paths[gallery_rows[order[0]]])
        np.testing.assert_allclose([match["score"] for match in result["matches"]], scores[0],
                                   atol=SCORE_TOLERANCE)
        assert result["camera"] == cams[row] and result["modality"] == "ir"


def test_filters_are_respected(embedder, gallery, entries):
    cam3 = next(entry["path"] for entry in entries if entry["camera"] == 3)
    cam6 = next(entry["path"] for entry in entries if entry["camera"] == 6)
    same_room, other_room = search.search(embedder, gallery, [cam3, cam6], 40)
    assert {match["camera"] for match in same_room["matches"]} == {1, 4, 5}  # never cam 2 for cam 3
    assert 2 in {match["camera"] for match in other_room["matches"]}
    assert "camera != 2" in same_room["filter"]
    chosen = search.search(embedder, gallery, [cam6], 40, cameras=(2, 5))[0]["matches"]
    assert {match["camera"] for match in chosen} == {2, 5}
    # Without the other-modality filter IR images come back, but never the query itself.
    anything = search.search(embedder, gallery, [cam6], 91, other_modality=False, same_room={})[0]["matches"]
    assert len(anything) == 90 and cam6 not in {match["path"] for match in anything}
    assert {match["modality"] for match in anything} == {"rgb", "ir"}


def test_reindexing_does_not_duplicate(embedder, gallery, entries):
    again = search.index_images(embedder, gallery, entries, progress=False)
    assert (again.present, again.indexed) == (len(entries), 0)
    forced = search.index_images(embedder, gallery, entries[:20], reindex=True, progress=False)
    assert (forced.present, forced.indexed) == (0, 20)
    assert gallery.count() == len(entries)


def test_unreadable_images_are_skipped_and_named(embedder, entries, tmp_path):
    """A folder with 3 images of camera 1, a truncated JPEG, a text file named .png; a .csv
    list of the same good files with their own cameras and times, and a time window."""
    folder = tmp_path / "cam1"
    folder.mkdir()
    good = [shutil.copy(entry["path"], folder / f"{n}.jpg") for n, entry in enumerate(entries[:3])]
    truncated, text = folder / "truncated.jpg", folder / "notes.png"
    truncated.write_bytes(open(entries[0]["path"], "rb").read()[:100])
    text.write_text("not an image")
    gallery = open_gallery(tmp_path / "folder.db", embedder)
    summary = search.index_images(embedder, gallery, search.folder_images(str(tmp_path), (3, 6)), progress=False)
    assert summary.indexed == 3 and gallery.count() == 3
    assert sorted(path for path, _ in summary.bad) == sorted([str(text), str(truncated)])
    assert all(why for _, why in summary.bad)
    gallery.client.close()

    with open(tmp_path / "list.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "camera", "time"])
        writer.writerows([[os.path.relpath(path, tmp_path), camera, time]
                          for path, camera, time in zip(good, (1, 2, 4), (100, 200, 300))])
    listed = search.list_images(str(tmp_path / "list.csv"), (3, 6))
    assert [(entry["camera"], entry["modality"], entry["time"]) for entry in listed] == [
        (1, "rgb", 100), (2, "rgb", 200), (4, "rgb", 300)]
    gallery = open_gallery(tmp_path / "list.db", embedder)
    search.index_images(embedder, gallery, listed, progress=False)
    window = search.search(embedder, gallery, [entries[-1]["path"]], 3, time_window=(150, 300))[0]["matches"]
    assert sorted(match["time"] for match in window) == [200, 300]
    gallery.client.close()


def test_another_model_and_a_missing_or_empty_collection_are_errors(exports, embedder, gallery, tmp_path):
    other = search.SavedModelEmbedder(exports[1])
    assert search.fingerprint(other.metadata) != search.fingerprint(embedder.metadata)
    with pytest.raises(ValueError, match="indexed with another model"):
        gallery.check(search.fingerprint(other.metadata), other.name, other.metadata["embedding_dim"])
    with pytest.raises(ValueError, match="indexed with another model"):
        gallery.create_or_check(search.fingerprint(other.metadata), other.name, other.metadata["embedding_dim"])
    missing = search.Gallery(gallery.client, "nothing_here", "test.db")
    with pytest.raises(ValueError, match="no collection 'nothing_here'"):
        missing.check(search.fingerprint(embedder.metadata), embedder.name, 32)
    empty = open_gallery(tmp_path / "empty.db", embedder)
    empty.client.close()
    values = types.SimpleNamespace(output_json=str(tmp_path / "out.json"), model=exports[0], server=None,
                                   milvus_uri=None, images=[], modality=None, sheet=None)
    options = config.SearchConfig(db=str(tmp_path / "empty.db"), top_k=1, same_room=())
    with pytest.raises(ValueError, match="collection 'gallery' is empty"):
        search.run_query(values, options)
    with pytest.raises(ValueError, match="no such database"):
        search.run_query(values, dataclasses.replace(options, db=str(tmp_path / "absent.db")))


def test_tf_serving_embeds_as_the_saved_model(exports, embedder, gallery, entries, tmp_path):
    """The loopback Predict server (TF Serving's API) serves the same export: same fingerprint, so
    it queries the collection the in-process model filled, with the same matches; a refused image
    is skipped by name."""
    server, port = serve(exports[0], port=0, model_name="jsia")
    try:
        served = search.ServingEmbedder(f"127.0.0.1:{port}", "jsia")
        assert search.fingerprint(served.metadata) == search.fingerprint(embedder.metadata)
        queries = [entry["path"] for entry in entries if entry["camera"] == 6][:2]
        expected = search.search(embedder, gallery, queries, TOP_K)
        got = search.search(served, gallery, queries, TOP_K)
        for want, have in zip(expected, got):
            assert [m["path"] for m in have["matches"]] == [m["path"] for m in want["matches"]]
            np.testing.assert_allclose([m["score"] for m in have["matches"]], [m["score"] for m in want["matches"]],
                                       atol=SCORE_TOLERANCE)
        text = tmp_path / "notes.png"
        text.write_text("not an image")
        vectors, kept, bad = search.embed_files(served, [queries[0], str(text)])
        assert kept == [0] and vectors.shape == (1, 32) and [path for path, _ in bad] == [str(text)]
    finally:
        server.stop(grace=None).wait(10)


def run_search(*args, **popen):
    """``python -m jsia_tf.search args`` from the repository root."""
    return subprocess.Popen([sys.executable, "-m", "jsia_tf.search", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen)


def test_a_second_process_on_the_database_is_refused(exports, data_dir, gallery):
    """Milvus Lite opens a database in one process: this one holds the fixture's."""
    second = run_search("index", f"--model={exports[0]}", f"--images={data_dir}", "--dataset=sysu",
                        f"--db={gallery.where}")
    out, err = (stream.decode() for stream in second.communicate(timeout=120))
    assert second.returncode == 1 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == (f"error: --db={gallery.where}: cannot open it: another process has it "
                                            "open (Milvus Lite opens a database in one process at a time; concurrent "
                                            "indexers need a Milvus server, --milvus_uri)")
    assert gallery.count() == 91


def test_kill_during_indexing_then_resume_and_query(exports, data_dir, entries, tmp_path):
    """kill -9 once a batch is written; the rerun skips what is stored and completes the
    collection; a query then writes its JSON and contact sheet."""
    db = str(tmp_path / "gallery.db")
    index = ["index", f"--model={exports[0]}", f"--images={data_dir}", "--dataset=sysu", f"--db={db}",
             "--batch_size=2"]
    killed = run_search(*index)
    seen = b""
    while b"/image" not in seen:  # the progress bar's first line: a batch is stored
        chunk = killed.stdout.read1(4096)
        assert chunk, killed.stderr.read().decode()[-2000:]
        seen += chunk
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    resumed = run_search(*index)
    out, err = (stream.decode() for stream in resumed.communicate(timeout=120))
    assert resumed.returncode == 0, err[-2000:]
    summary = out.strip().splitlines()[-1]
    present = int(summary.split(" already")[0].split(", ")[-1])
    assert 2 <= present < len(entries), summary
    assert summary.endswith(f"holds {len(entries)} images"), summary

    query = next(entry["path"] for entry in entries if entry["camera"] == 3)
    output = tmp_path / "matches.json"
    asked = run_search("query", f"--model={exports[0]}", f"--images={query}", f"--db={db}", "--top_k=5",
                       f"--output_json={output}")
    out, err = (stream.decode() for stream in asked.communicate(timeout=120))
    assert asked.returncode == 0, err[-2000:]
    result = json.loads(output.read_text())["queries"][0]
    assert len(result["matches"]) == 5 and all(match["camera"] in (1, 4, 5) for match in result["matches"])
    sheet = tf.io.decode_png(tf.io.read_file(str(output.with_suffix(".png")))).numpy()
    assert sheet.shape[:2] == (HEIGHT + 6, 6 * (WIDTH + 6))
