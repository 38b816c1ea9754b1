"""Module G against ground truth (jsia_tf.eval.ground_truth): the measures against
hand-computed values, and the whole evaluation on a synthetic dataset's true pairs with
translators whose answers are known (the true pair itself, the untranslated source)."""

import numpy as np
import pytest
import tensorflow as tf

from jsia_tf.data import pipeline, synthetic
from jsia_tf.eval import ground_truth, quality
from jsia_tf.models.generation import to_unit_range

HEIGHT, WIDTH = 32, 16


def test_gray_ssim_and_l1_against_hand_values():
    black = np.zeros((1, 16, 16, 3), np.uint8)
    white = np.full((1, 16, 16, 3), 255, np.uint8)
    red = np.zeros((1, 16, 16, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(ground_truth.gray(red), 0.2989, atol=1e-6)  # ITU-R BT.601 luma of red
    white_gray = sum(quality.LUMA_RGB)  # 0.9999: the official weights do not sum to 1
    np.testing.assert_allclose(ground_truth.l1(black, white), [white_gray], atol=1e-6)
    np.testing.assert_allclose(ground_truth.l1(red, black), [0.2989], atol=1e-6)
    noise = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    np.testing.assert_allclose(ground_truth.ssim(noise, noise), 1.0, atol=1e-6)
    # Constant images: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1), C1 = (0.01)^2.
    c1 = 0.01 ** 2
    np.testing.assert_allclose(ground_truth.ssim(black, white), c1 / (white_gray ** 2 + c1), rtol=1e-3)
    assert ground_truth.ssim(noise, 255 - noise).max() < 0  # an inverted image anti-correlates
    # Scored over a mask: equal there, different elsewhere (beyond the window's reach).
    other = noise.copy()
    other[:, :, 8:] = 255 - other[:, :, 8:]
    left = np.zeros((3, 16, 16), bool)
    left[:, :, :2] = True
    np.testing.assert_allclose(ground_truth.ssim(noise, other, left), 1.0, atol=1e-6)
    np.testing.assert_allclose(ground_truth.l1(noise, other, left), 0.0, atol=1e-7)
    assert ground_truth.ssim(noise, other).max() < 0.6


def test_fidelity_reports_both_floors_and_the_better_one():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 256, (4, 16, 8, 3)).astype(np.uint8)
    source = (255 - target).astype(np.uint8)
    numbers = ground_truth.fidelity(target, target, source)
    assert numbers["ssim"] == pytest.approx(1.0, abs=1e-6) and numbers["l1"] == pytest.approx(0.0, abs=1e-7)
    assert numbers["ssim_frame"] == numbers["ssim"]  # no mask: the person is the frame
    mean_image = np.round(target.mean(axis=0)).astype(np.uint8)
    gray_target = ground_truth.gray(target)
    assert numbers["l1_floor_source"] == pytest.approx(np.abs(ground_truth.gray(source) - gray_target).mean(),
                                                       abs=1e-6)
    assert numbers["l1_floor_mean"] == pytest.approx(np.abs(ground_truth.gray(mean_image[None]) - gray_target).mean(),
                                                     abs=1e-6)
    assert numbers["ssim_floor"] == max(numbers["ssim_floor_source"], numbers["ssim_floor_mean"])
    assert numbers["l1_floor"] == min(numbers["l1_floor_source"], numbers["l1_floor_mean"])


def test_rank1_is_the_share_of_queries_whose_nearest_gallery_image_is_their_person():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    gallery_pids = np.array([7, 8, 9])
    queries = np.array([[1.0, 0.1], [0.1, 1.0], [0.9, 1.0], [2.0, 0.0]])  # nearest: 7, 8, 9, 7
    assert ground_truth.rank1(queries, np.array([7, 8, 8, 9]), gallery, gallery_pids) == 0.5


class _Model:
    """Stands for JSIA in ground_truth.evaluate: G at half of F's size, like --generation_scale=2."""

    generation_size = (HEIGHT // 2, WIDTH // 2)

    def to_generation(self, images):
        return to_unit_range(tf.image.resize(images, (HEIGHT // 2, WIDTH // 2), method="area"))

    def to_alignment(self, images):
        from jsia_tf.models.generation import from_unit_range
        return tf.image.resize(from_unit_range(images), (HEIGHT, WIDTH))


def _embed(images):
    """A fixed judge: the image pooled to 8 x 4 gray values."""
    return tf.reshape(tf.reduce_mean(tf.image.resize(images, (8, 4), method="area"), -1), [len(images), -1]).numpy()


@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    root = tmp_path_factory.mktemp("sysu")
    synthetic.generate(root, "sysu", 12, 0, 2 * HEIGHT, 2 * WIDTH, test_ids=4)
    return root, pipeline.load_dataset("sysu", root).test


@pytest.mark.parametrize("translator", ["true_pair", "source"])
def test_evaluate_scores_known_translators_on_the_true_pairs(sysu, monkeypatch, translator):
    """The true pair as the translation scores SSIM 1 and the judge's own rank-1 of the true
    images; the untranslated source scores exactly the trivial floor. The same holds for
    the reconstructions (here, the real images themselves)."""
    root, test = sysu
    model = _Model()

    def translate(_, rgb, ir):
        real = {"rgb": model.to_generation(rgb), "ir": model.to_generation(ir)}
        swap = {"rgb2ir": "ir", "ir2rgb": "rgb"} if translator == "true_pair" else {"rgb2ir": "rgb", "ir2rgb": "ir"}
        return {**{d: real[m] for d, m in swap.items()}, "recon_rgb": real["rgb"], "recon_ir": real["ir"]}

    monkeypatch.setattr(ground_truth, "translate", translate)
    pairs = synthetic.read_paired_test(root)
    numbers = ground_truth.evaluate(model, _embed, pairs, test, "sysu", HEIGHT, WIDTH, batch_size=5)
    assert numbers["pairs"] == 4 * synthetic.PAIRS_PER_ID and numbers["persons"] == 4
    test_features = _embed(next(iter(pipeline.eval_dataset(test, HEIGHT, WIDTH, len(test)))))
    is_rgb = np.isin(test.cams, (1, 2, 4, 5))
    for direction, source, target, gallery in (("rgb2ir", "rgb", "ir", ~is_rgb), ("ir2rgb", "ir", "rgb", is_rgb)):
        values = numbers[direction]
        assert values["chance"] == 1 / len(np.unique(test.pids[gallery]))
        true_images = pipeline.preprocess(pairs[target] if target == "rgb" else pairs[target][..., None], HEIGHT,
                                          WIDTH)
        source_images = pipeline.preprocess(pairs[source] if source == "rgb" else pairs[source][..., None], HEIGHT,
                                            WIDTH)
        expected_source = ground_truth.rank1(_embed(source_images), pairs["pids"], test_features[gallery],
                                             test.pids[gallery])
        assert values["identity_rank1_source"] == pytest.approx(expected_source)
        if translator == "true_pair":
            assert values["ssim"] == pytest.approx(1.0, abs=1e-5) and values["l1"] == pytest.approx(0.0, abs=1e-4)
            assert values["ssim"] > values["ssim_floor"]
            # The judge reads F's view: G's half-size image upsampled, not the full-size one.
            seen = _embed(model.to_alignment(model.to_generation(true_images)))
            assert values["identity_rank1"] == pytest.approx(
                ground_truth.rank1(seen, pairs["pids"], test_features[gallery], test.pids[gallery]))
        else:
            assert values["ssim"] == pytest.approx(values["ssim_floor_source"], abs=1e-6)
            assert values["l1"] == pytest.approx(values["l1_floor_source"], abs=1e-6)
    for m in ("rgb", "ir"):
        assert numbers["reconstruction"][m]["ssim"] == pytest.approx(1.0, abs=1e-5)
        assert numbers["reconstruction"][m]["ssim_floor"] < 0.9
    assert set(ground_truth.scalars(numbers)) >= {"generation/rgb2ir/ssim", "generation/ir2rgb/ssim_floor",
                                                  "generation/recon_ir/l1", "generation/ir2rgb/identity_rank1"}


def test_evaluate_keeps_only_the_pairs_of_test_persons(sysu):
    root, test = sysu
    pairs = synthetic.read_paired_test(root)
    outside = {name: values.copy() for name, values in pairs.items()}
    outside["pids"] = outside["pids"] + 1000  # nobody of the test set
    with pytest.raises(ValueError, match="no true pair shows a person of the test set"):
        ground_truth.evaluate(_Model(), _embed, outside, test, "sysu", HEIGHT, WIDTH)
