"""Multi-scale discriminators Dis_rgb / Dis_ir of the GAN loss (paper Sec. 3.1, Eq. 7).

Eq. 7 is written as the log-likelihood GAN objective, but Sec. 4.2 trains LSGAN
discriminators (Mao et al.), as the official code does. The paper gives no
architecture; config.ModelConfig's defaults are the official code's (MUNIT's
multi-scale PatchGAN):
``num_scales`` = 2 copies of [``num_layers`` = 4 x (reflection pad 1, 4x4 stride-2 conv,
LeakyReLU 0.2) with widths 32, 64, 128, 256, then a 1x1 conv to one channel], the
image being average-pooled (3x3, stride 2, padding 1, padding excluded from the count)
between scales. Weights start N(0, 0.02), biases 0 (official ``weights_init("gaussian")``).
690,401 parameters per scale.

The outputs are raw scores (no sigmoid), one patch map per scale, for the least-squares
losses of ``jsia_tf.losses``. Inputs are unit-range images in [-1, 1]
(``generation.to_unit_range``).
"""

import keras
import tensorflow as tf

from jsia_tf.models.layers import ConvBlock, build_sublayer, initializer_config, make_initializer


def discriminator_initializer_config(identifier=None):
    """``layers.initializer_config``, with None meaning N(0, 0.02) (official discriminators)."""
    if identifier is None:
        identifier = keras.initializers.RandomNormal(mean=0.0, stddev=0.02)
    return initializer_config(identifier)


def pooled_size(size, pool_size=3, strides=2, padding=1):
    """Spatial size after :func:`avg_pool_exclude_pad` (None stays None)."""
    return None if size is None else (size + 2 * padding - pool_size) // strides + 1


def avg_pool_exclude_pad(x, pool_size=3, strides=2, padding=1):
    """Average pooling that leaves padding out of each window's count.

    PyTorch's ``AvgPool2d(3, stride=2, padding=1, count_include_pad=False)``: the input
    is padded symmetrically by ``padding``; each output averages only the real pixels of
    its window. (TF's "SAME" pooling also excludes padding, but pads even-sized inputs
    on the bottom/right only, which shifts the windows.)

    Args:
      x: [B, H, W, C].
    Returns:
      [B, pooled_size(H), pooled_size(W), C], i.e. [B, ceil(H / 2), ceil(W / 2), C] for the
      defaults.
    """
    paddings = [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    window_means = tf.nn.avg_pool2d(tf.pad(x, paddings), pool_size, strides, "VALID")  # over k*k
    ones = tf.ones_like(x[:1, :, :, :1])  # [1, H, W, 1], 1 on real pixels
    real_fraction = tf.nn.avg_pool2d(tf.pad(ones, paddings), pool_size, strides, "VALID")  # [1, h, w, 1]
    return window_means / real_fraction


@keras.saving.register_keras_serializable(package="jsia_tf")
class PatchDiscriminator(keras.layers.Layer):
    """One scale of :class:`MultiScaleDiscriminator`: ``num_layers`` x [reflection pad 1,
    4x4 stride-2 conv, activation], widths ``base_width * 2^i``, then a 1x1 conv to one
    score per patch.

    Args: as :class:`MultiScaleDiscriminator`.
    Input: [B, H, W, 3]. Output: float32 [B, H / 2^num_layers, W / 2^num_layers, 1].
    """

    def __init__(self, num_layers, base_width, activation="leaky_relu", kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.num_layers = num_layers
        self.base_width = base_width
        self.activation = activation
        self.kernel_initializer = discriminator_initializer_config(kernel_initializer)
        for i in range(num_layers):
            setattr(self, f"conv{i}", ConvBlock(base_width * 2 ** i, 4, strides=2, activation=activation,
                                                kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy,
                                                name=f"conv{i}"))
        # float32 scores for the losses.
        self.score = ConvBlock(1, 1, activation=None, kernel_initializer=self.kernel_initializer, dtype="float32",
                               name="score")

    @property
    def convs(self):
        return [getattr(self, f"conv{i}") for i in range(self.num_layers)]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            build_sublayer(conv, shape)
            shape = conv.compute_output_shape(shape)
        build_sublayer(self.score, shape)

    def call(self, images):
        x = images  # [B, H, W, 3]
        for conv in self.convs:
            x = conv(x)  # [B, H / 2^(i+1), W / 2^(i+1), base_width * 2^i]
        return self.score(x)  # [B, H / 2^num_layers, W / 2^num_layers, 1]

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            shape = conv.compute_output_shape(shape)
        return self.score.compute_output_shape(shape)

    def get_config(self):
        return {**super().get_config(), "num_layers": self.num_layers, "base_width": self.base_width,
                "activation": self.activation, "kernel_initializer": self.kernel_initializer}


@keras.saving.register_keras_serializable(package="jsia_tf")
class MultiScaleDiscriminator(keras.Model):
    """Dis_rgb / Dis_ir (Eq. 7): an LSGAN PatchGAN discriminator at several scales.

    Args:
      num_scales: number of image scales (official 2).
      num_layers: stride-2 convs per scale (official 4).
      base_width: width of the first conv; each following conv doubles it (official 32).
      activation: activation after each conv (official LeakyReLU 0.2).
      kernel_initializer: see :func:`discriminator_initializer_config` (default N(0, 0.02)).

    Input: unit-range images [B, H, W, 3], H and W large enough for every scale's
    reflection padding (64x32 for the official sizes).
    Output: list of ``num_scales`` float32 score maps [B, h_s, w_s, 1], scale s seeing
    the image pooled s times (h_0 = H / 2^num_layers).
    """

    def __init__(self, num_scales, num_layers, base_width, activation="leaky_relu", kernel_initializer=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_scales = num_scales
        self.num_layers = num_layers
        self.base_width = base_width
        self.activation = activation
        self.kernel_initializer = discriminator_initializer_config(kernel_initializer)
        for s in range(num_scales):
            setattr(self, f"scale{s}", PatchDiscriminator(num_layers, base_width, activation=activation,
                                                          kernel_initializer=self.kernel_initializer,
                                                          dtype=self.dtype_policy, name=f"scale{s}"))

    @property
    def scales(self):
        return [getattr(self, f"scale{s}") for s in range(self.num_scales)]

    def build(self, input_shape):
        batch, height, width, channels = input_shape
        for scale in self.scales:
            build_sublayer(scale, (batch, height, width, channels))
            height, width = pooled_size(height), pooled_size(width)

    def call(self, images):
        outputs = []
        x = images  # [B, H, W, 3]
        for s, scale in enumerate(self.scales):
            if s:
                x = avg_pool_exclude_pad(x)  # [B, ceil(H_s / 2), ceil(W_s / 2), 3]
            outputs.append(scale(x))  # [B, H_s / 2^num_layers, W_s / 2^num_layers, 1]
        return outputs

    def get_config(self):
        return {**super().get_config(), "num_scales": self.num_scales, "num_layers": self.num_layers,
                "base_width": self.base_width, "activation": self.activation,
                "kernel_initializer": self.kernel_initializer}


@keras.saving.register_keras_serializable(package="jsia_tf")
class ModalityDiscriminator(keras.Model):
    """The modality discriminator of the degraded set-level alignment (Table 3, index 7).

    Sec. 4.4 trains a set-level encoder E^sl that is not shared with module G's E^i
    "with a GAN loss as in Dai et al. (2018)" (cmGAN: a discriminator tells the
    modality of the shared features, the feature extractor learns to fool it). This
    network reads E^sl's set-level maps M: global average pooling, ``num_hidden``
    fully connected layers of ``hidden_units`` with the activation, then one score per
    image (no sigmoid: the least-squares losses ``losses.lsgan_modality_*``).
    Weights start N(0, 0.02), biases 0, like the image discriminators.

    Args:
      hidden_units: width of each hidden layer.
      num_hidden: number of hidden layers (0: a linear score of the pooled features).
      activation: activation after each hidden layer.
      kernel_initializer: see :func:`discriminator_initializer_config`.

    Input: set-level maps M [B, h, w, C]. Output: float32 scores [B].
    """

    def __init__(self, hidden_units=256, num_hidden=1, activation="leaky_relu", kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = hidden_units
        self.num_hidden = num_hidden
        self.activation = activation
        self.kernel_initializer = discriminator_initializer_config(kernel_initializer)
        for i in range(num_hidden):
            setattr(self, f"hidden{i}", keras.layers.Dense(
                hidden_units, activation=activation, kernel_initializer=make_initializer(self.kernel_initializer),
                dtype=self.dtype_policy, name=f"hidden{i}"))
        # float32 scores for the losses.
        self.score = keras.layers.Dense(1, kernel_initializer=make_initializer(self.kernel_initializer),
                                        dtype="float32", name="score")

    @property
    def hidden(self):
        return [getattr(self, f"hidden{i}") for i in range(self.num_hidden)]

    def build(self, maps_shape):
        shape = (maps_shape[0], maps_shape[-1])
        for layer in self.hidden:
            build_sublayer(layer, shape)
            shape = layer.compute_output_shape(shape)
        build_sublayer(self.score, shape)

    def call(self, maps):
        x = tf.reduce_mean(maps, axis=[1, 2])  # [B, C]
        for layer in self.hidden:
            x = layer(x)  # [B, hidden_units]
        return self.score(x)[:, 0]  # [B]

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units, "num_hidden": self.num_hidden,
                "activation": self.activation, "kernel_initializer": self.kernel_initializer}
