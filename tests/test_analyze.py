"""`python -m jsia_tf.analyze`: the figures' arithmetic, then every kind on one smoke run.

The smoke run is the shared smoke training run (conftest.smoke_run: the smoke preset,
32x16 images, 4 test persons x 10 images per modality, 4 steps): the analysis needs a
run folder and a checkpoint, not a trained model. FID there uses a randomly initialised InceptionV3 written to a
local file (the FID arithmetic is tested in test_quality.py).
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from jsia_tf import analyze, config, visualize
from jsia_tf.data import pipeline, records
from jsia_tf.eval import protocols, similarity

REPO = pathlib.Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 32, 16  # the smoke preset
CELL_HEIGHT, CELL_WIDTH = HEIGHT + 2 * visualize.BORDER, WIDTH + 2 * visualize.BORDER
NUM_IDENTITIES, NUM_QUERIES, TOP_K, FID_IMAGES = 3, 3, 4, 6


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jsia_tf.analyze", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception.weights.h5"
    keras.utils.set_random_seed(0)
    keras.applications.InceptionV3(include_top=False, pooling="avg", weights=None).save_weights(path)
    return path


@pytest.fixture(scope="session")
def smoke(smoke_run, tmp_path_factory, inception_file):
    """The shared smoke run and one analysis of it with every kind."""
    data_dir, run_dir = smoke_run[:2]
    out = tmp_path_factory.mktemp("analysis")
    result = run_cli(f"--run_dir={run_dir}", f"--out={out}", f"--num_identities={NUM_IDENTITIES}",
                     f"--num_queries={NUM_QUERIES}", f"--top_k={TOP_K}", f"--fid_images={FID_IMAGES}",
                     "--batch_size=4", f"--inception_weights={inception_file}")
    assert result.returncode == 0, result.stderr[-3000:]
    return data_dir, run_dir, out, result


@pytest.fixture(scope="session")
def known(smoke):
    """identify(image) -> (pid, cam) of the smoke test image it shows, None for another image."""
    test = pipeline.load_dataset("regdb", str(smoke[0]), trial=1).test
    pixels = pipeline.denormalize(np.stack([pipeline.load_image(p, HEIGHT, WIDTH) for p in test.paths])).numpy()

    def identify(image):
        difference = np.abs(pixels.astype(int) - image.astype(int)).reshape(len(pixels), -1).max(axis=1)  # [N]
        # 1: rounding after the unit-range round trip of module G's real images.
        best = np.argmin(difference)
        return (test.pids[best], test.cams[best]) if difference[best] <= 1 else None

    return identify


def cells(image, rows, cols):
    """[rows, cols, H, W, 3] images inside the frames of a visualize.tile grid."""
    grid = image.reshape(rows, CELL_HEIGHT, cols, CELL_WIDTH, 3).transpose(0, 2, 1, 3, 4)
    b = visualize.BORDER
    return grid[:, :, b:b + HEIGHT, b:b + WIDTH], grid[:, :, 0, 0]  # images, frame colours


def read_png(out, kind):
    path = out / f"{kind}.png"
    assert path.stat().st_size > 0
    return np.asarray(Image.open(path).convert("RGB"))


# -- arithmetic ------------------------------------------------------------------------------------


def test_overlap_area():
    rng = np.random.default_rng(0)
    sample = rng.uniform(-0.9, 0.9, 1000)
    assert similarity.overlap_area(sample, sample) == pytest.approx(1.0)
    assert similarity.overlap_area(sample, rng.permutation(sample)) == pytest.approx(1.0)
    assert similarity.overlap_area(rng.uniform(-1, -0.1, 500), rng.uniform(0.1, 1, 50)) == 0.0
    # Uniform on [0, 0.4) vs on [0.2, 0.6) (bins of 0.04 on both edges): the shared half.
    a, b = np.linspace(0, 0.4, 400, endpoint=False), np.linspace(0.2, 0.6, 400, endpoint=False)
    assert similarity.overlap_area(a, b) == pytest.approx(0.5)


def test_cross_modality_similarities_by_hand():
    # Persons 1 and 2, one visible and one thermal image each; unit features.
    test = records.ImageList.from_lists(paths=["v1", "v2", "t1", "t2"], pids=[1, 2, 1, 2], cams=[1, 1, 2, 2],
                                        image_index=[1, 1, 1, 1])
    features = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    intra, inter = similarity.cross_modality_similarities(features, test, "regdb")
    # IR x RGB: t1 . v1 = 0.6 (same), t1 . v2 = 0.8, t2 . v1 = 1.0, t2 . v2 = 0.0 (same).
    np.testing.assert_allclose(np.sort(intra), [0.0, 0.6])
    np.testing.assert_allclose(np.sort(inter), [0.8, 1.0])
    _, sampled = similarity.cross_modality_similarities(features, test, "regdb", max_inter=1)
    assert sampled.shape == (1,) and sampled[0] in (0.8, 1.0)


def test_sysu_ranking_keeps_the_same_room_rule(sysu_root):
    test = pipeline.load_dataset("sysu", str(sysu_root)).test
    queries, gallery, allowed = analyze.query_gallery(test, "sysu", "v2t", seed=0)
    split = protocols.sysu_split(test.pids, test.cams, test.image_index, trials=1)
    np.testing.assert_array_equal(queries, split.queries)
    np.testing.assert_array_equal(gallery, split.galleries[0])
    same_room = (test.cams[queries] == 3)[:, None] & (test.cams[gallery] == 2)[None, :]
    assert same_room.any()
    np.testing.assert_array_equal(allowed, ~same_room)


def test_options_name_the_bad_flag():
    with pytest.raises(ValueError, match=r"--what=paired,bogus: unknown \['bogus'\]; expected a comma list of "
                                         r"paired,mixing,similarity,ranked,quality"):
        config.AnalysisConfig(what=("paired", "bogus"))
    with pytest.raises(ValueError, match="--num_identities=1: expected an integer >= 2"):
        config.AnalysisConfig(num_identities=1)


# -- every kind on the smoke run ------------------------------------------------------------------


@pytest.mark.large
def test_paired_rows_are_real_pairs_of_the_same_person(smoke, known):
    _, _, out, _ = smoke
    image = read_png(out, "paired")
    assert image.shape == (NUM_IDENTITIES * CELL_HEIGHT, 4 * CELL_WIDTH, 3)
    images, frames = cells(image, NUM_IDENTITIES, 4)
    assert (frames == visualize.WHITE).all()
    persons = []
    for row in images:
        rgb, ir = known(row[0]), known(row[2])  # real RGB | X_rgb2ir | real IR | X_ir2rgb
        assert rgb[1] == records.REGDB_VISIBLE_CAM and ir[1] == records.REGDB_THERMAL_CAM and rgb[0] == ir[0]
        assert known(row[1]) is None and known(row[3]) is None  # generated
        persons.append(rgb[0])
    assert len(set(persons)) == NUM_IDENTITIES


@pytest.mark.large
def test_mixing_rows_go_from_one_real_image_to_the_next_persons(smoke, known):
    _, _, out, _ = smoke
    image = read_png(out, "mixing")
    columns = 2 + len(visualize.ALPHAS)
    assert image.shape == (2 * NUM_IDENTITIES * CELL_HEIGHT, columns * CELL_WIDTH, 3)
    images, _ = cells(image, 2 * NUM_IDENTITIES, columns)
    for row in range(2 * NUM_IDENTITIES):
        cam = records.REGDB_VISIBLE_CAM if row % 2 == 0 else records.REGDB_THERMAL_CAM
        x_1, x_2 = known(images[row, 0]), known(images[row, -1])
        assert x_1[1] == x_2[1] == cam and x_1[0] != x_2[0]
        # x_2 is the next pair's x_1 (the persons form a cycle).
        np.testing.assert_array_equal(images[row, -1], images[(row + 2) % (2 * NUM_IDENTITIES), 0])
        assert all(known(images[row, c]) is None for c in range(1, columns - 1))


@pytest.mark.large
def test_ranked_borders_tell_right_from_wrong(smoke, known):
    _, _, out, _ = smoke
    image = read_png(out, "ranked")
    assert image.shape == (NUM_QUERIES * CELL_HEIGHT, (1 + TOP_K) * CELL_WIDTH, 3)
    images, frames = cells(image, NUM_QUERIES, 1 + TOP_K)
    for row in range(NUM_QUERIES):
        query_pid, query_cam = known(images[row, 0])
        assert query_cam == records.REGDB_VISIBLE_CAM and tuple(frames[row, 0]) == visualize.BLUE  # v2t
        shown = [known(images[row, c]) for c in range(1, 1 + TOP_K)]
        assert all(cam == records.REGDB_THERMAL_CAM for _, cam in shown)
        expected = [visualize.GREEN if pid == query_pid else visualize.RED for pid, _ in shown]
        assert [tuple(f) for f in frames[row, 1:]] == expected


@pytest.mark.large
def test_similarity_and_quality(smoke):
    _, run_dir, out, result = smoke
    assert read_png(out, "similarity").shape == (analyze.FIGURE_SIZE[1], analyze.FIGURE_SIZE[0], 3)
    assert read_png(out, "quality").shape == (analyze.TABLE_SIZE[1], analyze.TABLE_SIZE[0], 3)
    overlap = float(result.stdout.split("overlap area of intra- and inter-person similarity densities ")[1].split()[0])
    assert 0.0 <= overlap <= 1.0
    numbers = json.loads((out / "quality.json").read_text())
    assert numbers["pairs"] == FID_IMAGES and numbers["checkpoint"].endswith("ckpt-4")
    assert 0.0 < numbers["MD_FRI"] < 1.0 and 0.0 < numbers["MD_FLS"] < 1.0
    assert numbers["FID_FRI"] > 0 and numbers["FID_FLS"] > 0
    assert f"MD FRI {numbers['MD_FRI']:.4f} FLS {numbers['MD_FLS']:.4f}" in result.stdout
    # The same images in TensorBoard, beside the PNGs.
    events = event_accumulator.EventAccumulator(str(out), size_guidance={"tensors": 0})
    events.Reload()
    assert {f"analysis/{kind}" for kind in config.ANALYSIS_KINDS} | {"analysis/MD_FRI", "analysis/FID_FLS"} <= set(
        events.Tags()["tensors"])


@pytest.mark.large
@pytest.mark.parametrize("args, message", [
    (("--inception_weights=/nonexistent/inception.h5",),
     "error: inception_weights='/nonexistent/inception.h5': no such file"),
    (("--data_dir=EMPTY", "--what=paired"), "error: --data_dir=EMPTY: not a regdb dataset"),
])
def test_bad_input_is_one_clear_line(smoke, tmp_path, args, message):
    _, run_dir, _, _ = smoke
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.replace("EMPTY", str(empty)) for a in args]
    message = message.replace("EMPTY", str(empty))
    result = run_cli(f"--run_dir={run_dir}", f"--out={tmp_path / 'out'}", *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]


def test_a_folder_that_is_not_a_run(tmp_path):
    result = run_cli(f"--run_dir={tmp_path}", "--what=paired")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path}/config.json: not a jsia_tf run config")


@pytest.mark.large
def test_offline_without_weights_skips_fid_and_draws_the_rest(smoke, tmp_path):
    """The default --inception_weights=imagenet is a download; this machine has no
    internet (an empty KERAS_HOME holds no cached copy)."""
    _, run_dir, _, _ = smoke
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "jsia_tf.analyze", f"--run_dir={run_dir}", f"--out={out}",
                             "--what=similarity,quality", f"--fid_images={FID_IMAGES}", "--batch_size=4"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KERAS_HOME": str(tmp_path / "keras_home")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FID skipped: inception_weights='imagenet': the ImageNet weights could not be fetched" in result.stdout
    numbers = json.loads((out / "quality.json").read_text())
    assert numbers["FID_FRI"] is None and numbers["FID_FLS"] is None and 0.0 < numbers["MD_FRI"] < 1.0
    assert f"MD FRI {numbers['MD_FRI']:.4f} FLS {numbers['MD_FLS']:.4f} | FID skipped" in result.stdout
    assert read_png(out, "quality").shape == (analyze.TABLE_SIZE[1], analyze.TABLE_SIZE[0], 3)
    assert read_png(out, "similarity").shape == (analyze.FIGURE_SIZE[1], analyze.FIGURE_SIZE[0], 3)
