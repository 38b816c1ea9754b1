"""The Fig. 6 / Fig. 7 pictures shared by the training summaries and analyze: where each image lands."""

import numpy as np
import tensorflow as tf

from jsia_tf import visualize

H, W, B = 2, 1, 3  # image size, images per modality


def constant_images(values):
    """Unit-range [len(values), H, W, 3] images, image i all values[i]."""
    return tf.constant(np.broadcast_to(np.asarray(values, np.float32)[:, None, None, None], (len(values), H, W, 3)))


def interiors(grid, rows, cols, border=visualize.BORDER):
    """[rows, cols, H, W, 3] images inside the frames of a grid of H x W cells."""
    cells = grid.reshape(rows, H + 2 * border, cols, W + 2 * border, 3).transpose(0, 2, 1, 3, 4)
    return cells[:, :, border:border + H, border:border + W]


def test_tile_frames_each_cell():
    images = np.arange(2 * 3 * 4 * 2 * 3, dtype=np.uint8).reshape(2, 3, 4, 2, 3)
    colors = np.zeros((2, 3, 3), np.uint8)
    colors[1, 2] = (9, 8, 7)
    grid = visualize.tile(images, colors, border=1)
    assert grid.shape == (2 * 6, 3 * 4, 3)
    np.testing.assert_array_equal(grid[7:11, 9:11], images[1, 2])  # row 1 starts at 6, col 2 at 8; +1 border
    np.testing.assert_array_equal(grid[6, 8:12], [(9, 8, 7)] * 4)
    np.testing.assert_array_equal(grid[0, 0], (0, 0, 0))


def gen_value(gen, col, row):
    kind, m = visualize.PAIRED_TRAINING[col]
    return gen[kind][m][row]


def test_paired_grid_puts_each_named_image_in_its_column_and_row():
    # Image i of (kind, modality) number k has the unit value (10 k + i) / 100.
    gen = {}
    for k, (kind, m) in enumerate(visualize.PAIRED_TRAINING):
        gen.setdefault(kind, {})[m] = constant_images([(10 * k + i) / 100 for i in range(B)])
    grid = visualize.paired_grid(gen, visualize.PAIRED_TRAINING, count=2)
    images = interiors(grid, 2, len(visualize.PAIRED_TRAINING))
    for row in range(2):
        for col in range(len(visualize.PAIRED_TRAINING)):
            np.testing.assert_array_equal(images[row, col], visualize.to_pixels(gen_value(gen, col, row)))
    # The frames are white; Fig. 6 of analyze is real RGB | X_rgb2ir | real IR | X_ir2rgb.
    assert (grid[0, 0] == visualize.WHITE).all()
    assert visualize.PAIRED == (("real", "rgb"), ("cross", "ir"), ("real", "ir"), ("cross", "rgb"))


class MixingModel:
    """Stands in for JSIA: module V's mean is the content map itself and decoding returns the
    alpha-weighted mixture of the latent maps (an image), so each strip is a known blend."""

    def __init__(self):
        self.calls = []

    def variation(self, content, training):
        assert training is False
        return content, None, None

    def decode_mixture(self, modality, codes_1, codes_2, alpha):
        self.calls.append(modality)
        (z_1, s_1), (z_2, s_2) = codes_1, codes_2
        assert s_1.shape == s_2.shape == (len(alpha), 1)
        a = alpha[:, None, None, None]
        return a * z_1 + (1 - a) * z_2


def test_mixing_grid_goes_from_x1_through_the_mixtures_to_x2_in_each_modality():
    real = {"rgb": [-0.9, -0.5, 0.1], "ir": [0.9, 0.3, -0.2]}
    content = {"rgb": [-0.8, 0.0, 0.8], "ir": [0.6, -0.6, 0.2]}
    gen = {"real": {m: constant_images(v) for m, v in real.items()},
           "content": {m: constant_images(v) for m, v in content.items()},
           "style": {m: tf.zeros([B, 1]) for m in real}}
    model = MixingModel()
    first, second = np.array([0, 2]), np.array([1, 0])
    grid = visualize.mixing_grid(model, gen, first, second)
    steps = len(visualize.ALPHAS)
    images = interiors(grid, 2 * len(first), 2 + steps)
    assert model.calls == ["rgb", "ir"]  # one decode per modality for every pair and alpha
    for pair, (i, j) in enumerate(zip(first, second)):
        for offset, m in enumerate(("rgb", "ir")):
            row = images[2 * pair + offset]
            np.testing.assert_array_equal(row[0], visualize.to_pixels(gen["real"][m][i]))
            np.testing.assert_array_equal(row[-1], visualize.to_pixels(gen["real"][m][j]))
            for step, alpha in enumerate(visualize.ALPHAS):
                expected = alpha * content[m][i] + (1 - alpha) * content[m][j]
                np.testing.assert_allclose(row[1 + step].astype(int), visualize.to_pixels(constant_images([expected])[0]), atol=1)


def test_ranked_grid_frames_the_query_blue_and_matches_by_person():
    cells = np.zeros((2, 3, H, W, 3), np.uint8)  # 2 queries, 2 matches each
    grid = visualize.ranked_grid(cells, [[1, 0], [-1, True]])
    frame = grid.reshape(2, H + 2 * visualize.BORDER, 3, W + 2 * visualize.BORDER, 3)[:, 0, :, 0]  # [2, 3, 3]
    np.testing.assert_array_equal(frame, [[visualize.BLUE, visualize.GREEN, visualize.RED],
                                          [visualize.BLUE, visualize.WHITE, visualize.GREEN]])
