"""Module G: cross-modality paired-image generation (paper Sec. 3.1, Sec. 4.2).

One :class:`Generator` per modality (RGB, IR) holds that modality's

- style encoder E^s_m (Eq. 1): image -> modality-specific code M^s [B, style_dim];
- :class:`~jsia_tf.models.layers.MLP`: M^s -> the scale and bias of every AdaIN layer;
- decoder D_m (Eq. 3): (modality-invariant map M^i, M^s) -> image of modality m.

The modality-invariant encoder E^i (Eq. 2) is *not* here: with set-level alignment its
weights are shared with E^sl (Sec. 3.3), the ResNet-50 stem + layer1 of
``jsia_tf.models.backbone``, so the generators take its output maps as input.

Shape contract (paper configuration, 256x128 images):
  E^i = E^sl: image [B, H, W, 3] -> M^i [B, H/4, W/4, 256]
  E^s_m: image [B, H, W, 3] -> M^s [B, 128]
  D_m(M^i [B, h, w, C], M^s [B, style_dim]) -> image [B, h * 2^num_upsample,
  w * 2^num_upsample, 3]; the paper's 2 upsamplings give back [B, H, W, 3].
The official code uses 1 upsampling and decodes 128x64 images from 64x32 maps (its
encoder resizes the 128x64 GAN images to 256x128 before the ResNet).

Image spaces. The networks of module F take the pipeline's caffe-normalised BGR images
(``jsia_tf.data.pipeline.normalize``, values in about [-124, 152]). Module G works, as
the official code does, on *unit-range* images in [-1, 1], the range of the decoders'
tanh: the style encoders and the discriminators read unit-range images, and the L1
reconstruction and cycle losses (Eqs. 4, 5) compare unit-range images.
:func:`to_unit_range` and :func:`from_unit_range` convert between the two spaces; both
keep the BGR channel order (a decoder learns whichever order it is trained on), so
``from_unit_range(decoder output)`` can go straight into E^sl for the cycle (Eq. 6) and
the alignment (Eq. 11).
"""

import keras
import tensorflow as tf

from jsia_tf.data.pipeline import CAFFE_MEAN_BGR
from jsia_tf.models.layers import (MLP, NORMS, AdaINResBlock, ConvBlock, build_sublayer, initializer_config,
                                   make_initializer)

# Unit range [-1, 1] <-> pixels [0, 255].
_PIXEL_HALF_RANGE = 127.5


def to_unit_range(normalized):
    """Caffe-normalised BGR images [..., 3] -> BGR images in [-1, 1] (same dtype).

    ``x = (normalized + mean_bgr) / 127.5 - 1``: pixel 0 -> -1, pixel 255 -> 1.
    """
    normalized = tf.convert_to_tensor(normalized)
    mean = tf.constant(CAFFE_MEAN_BGR, normalized.dtype)
    return (normalized + mean) / _PIXEL_HALF_RANGE - 1.0


def from_unit_range(images):
    """Inverse of :func:`to_unit_range`: BGR images in [-1, 1] -> caffe-normalised BGR."""
    images = tf.convert_to_tensor(images)
    mean = tf.constant(CAFFE_MEAN_BGR, images.dtype)
    return (images + 1.0) * _PIXEL_HALF_RANGE - mean


@keras.saving.register_keras_serializable(package="jsia_tf")
class StyleEncoder(keras.layers.Layer):
    """Modality-specific (style) encoder E^s_rgb / E^s_ir (Sec. 3.1, Eq. 1; Sec. 4.2).

    ``first_kernel`` x ``first_kernel`` conv (stride 1, ``base_width``), then
    ``num_downsample`` 4x4 stride-2 convs that double the width up to ``max_width``,
    all reflection-padded with ReLU and no norm, then global average pooling and a
    fully connected layer to the style code.

    Paper (Sec. 4.2): "2 strided convolutional layers followed by a global average
    pooling layer and a fully connected layer" -> ``num_downsample=2`` (the stride-1
    first conv, which the paper's count of strided layers leaves out, is kept).
    Official configuration: ``num_downsample=4`` (widths 32, 64, 128, 128, 128), 709,824
    parameters; its FC is a 1x1 conv on the pooled vector (the same map) and its unused
    identity classifier on the style code is left out.

    Args:
      style_dim: length of the style code M^s.
      base_width: width of the first conv.
      num_downsample: number of stride-2 convs.
      max_width: the width stops doubling here.
      first_kernel: kernel size of the first conv.
      activation: activation after every conv.
      kernel_initializer: see ``layers.initializer_config``.

    Input: unit-range images [B, H, W, 3]. Output: [B, style_dim].
    """

    def __init__(self, style_dim, base_width, num_downsample, max_width, first_kernel=7, activation="relu",
                 kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if max_width < base_width:
            raise ValueError(f"StyleEncoder max_width={max_width} is below base_width={base_width}")
        self.style_dim = style_dim
        self.base_width = base_width
        self.num_downsample = num_downsample
        self.max_width = max_width
        self.first_kernel = first_kernel
        self.activation = activation
        self.kernel_initializer = initializer_config(kernel_initializer)
        widths = [min(base_width * 2 ** i, max_width) for i in range(num_downsample + 1)]
        kernels, strides = [first_kernel] + [4] * num_downsample, [1] + [2] * num_downsample
        for i, (width, kernel, stride) in enumerate(zip(widths, kernels, strides)):
            setattr(self, f"conv{i}", ConvBlock(width, kernel, strides=stride, activation=activation,
                                                kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy,
                                                name=f"conv{i}"))
        self.fc = keras.layers.Dense(style_dim, kernel_initializer=make_initializer(self.kernel_initializer),
                                     dtype=self.dtype_policy, name="fc")

    @property
    def convs(self):
        return [getattr(self, f"conv{i}") for i in range(self.num_downsample + 1)]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            build_sublayer(conv, shape)
            shape = conv.compute_output_shape(shape)
        build_sublayer(self.fc, (shape[0], shape[-1]))

    def call(self, images):
        x = images  # [B, H, W, 3]
        for conv in self.convs:
            x = conv(x)  # [B, H / 2^i, W / 2^i, width_i]
        x = tf.reduce_mean(x, axis=[1, 2])  # [B, width], global average pooling
        return self.fc(x)  # [B, style_dim]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.style_dim)

    def get_config(self):
        return {**super().get_config(), "style_dim": self.style_dim, "base_width": self.base_width,
                "num_downsample": self.num_downsample, "max_width": self.max_width,
                "first_kernel": self.first_kernel, "activation": self.activation,
                "kernel_initializer": self.kernel_initializer}


@keras.saving.register_keras_serializable(package="jsia_tf")
class Decoder(keras.layers.Layer):
    """AdaIN decoder D_rgb / D_ir (Sec. 3.1, Eq. 3; Sec. 4.2).

    ``num_res_blocks`` :class:`~jsia_tf.models.layers.AdaINResBlock` at ``width``
    (default ``content_channels``; a different width first maps the content with a 1 x 1
    convolution), then ``num_upsample`` x [nearest upsampling x2,
    ``upsample_kernel`` conv halving the width, ``upsample_norm``, ReLU], then a
    reflection-padded ``output_kernel`` conv to ``output_channels`` and tanh. Each
    upsampling and its conv are computed together at the lower resolution
    (:func:`~jsia_tf.models.layers.upsample_conv2d`: the same function, 9 / 25 of the
    multiply-adds with 5 x 5 kernels).

    Paper (Sec. 4.2): "4 residual blocks with AdaIN and 2 upsampling with convolutional
    layers" -> ``num_res_blocks=4, num_upsample=2``. Official configuration:
    ``num_res_blocks=2, num_upsample=1`` (3,198,723 parameters with 256 channels). The
    paper does not name the norm after the upsampling convs; the default is the
    official one, :class:`~jsia_tf.models.layers.LayerNorm2D` ("layer").

    AdaIN parameters: ``adain_params`` [B, num_adain_params] holds, for each AdaIN
    layer in order (block 0 conv 1, block 0 conv 2, block 1 conv 1, ...), its bias
    (W values) then its scale (W values): the official layout.

    Args:
      content_channels: channels C of the modality-invariant maps (256 for ResNet-50's
        layer1).
      width: the residual blocks' width W; None: ``content_channels``, as in the paper
        and the official code, whose 256 channels leave 64 before the output conv. A
        small E^sl (16 channels) would leave 4: its decoders get their own width.
      num_res_blocks: number of AdaIN residual blocks.
      num_upsample: number of x2 upsamplings.
      upsample_kernel: kernel size of the upsampling convs.
      upsample_norm: norm after the upsampling convs, one of ``layers.NORMS``.
      output_channels: image channels.
      output_kernel: kernel size of the output conv.
      activation: activation of the residual blocks and upsampling convs.
      kernel_initializer: see ``layers.initializer_config``.

    Inputs: content [B, h, w, C], adain_params [B, num_adain_params].
    Output: float32 unit-range images [B, h * 2^num_upsample, w * 2^num_upsample,
    output_channels] (the last conv and tanh run in float32 under mixed precision).
    """

    def __init__(self, content_channels, num_res_blocks, num_upsample, upsample_kernel=5,
                 upsample_norm="layer", output_channels=3, output_kernel=7, activation="relu",
                 kernel_initializer=None, width=None, **kwargs):
        super().__init__(**kwargs)
        if upsample_norm not in NORMS:
            raise ValueError(f"Decoder upsample_norm must be one of {NORMS}, got {upsample_norm!r}")
        self.width = content_channels if width is None else width
        if self.width % 2 ** num_upsample:
            raise ValueError(f"Decoder halves its width {self.width} {num_upsample} times: it must be divisible by "
                             f"{2 ** num_upsample}")
        self.content_channels = content_channels
        self.num_res_blocks = num_res_blocks
        self.num_upsample = num_upsample
        self.upsample_kernel = upsample_kernel
        self.upsample_norm = upsample_norm
        self.output_channels = output_channels
        self.output_kernel = output_kernel
        self.activation = activation
        self.kernel_initializer = initializer_config(kernel_initializer)
        self.input_conv = (None if self.width == content_channels else ConvBlock(
            self.width, 1, activation=None, kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy,
            name="input_conv"))
        for i in range(num_res_blocks):
            setattr(self, f"res_block{i}", AdaINResBlock(self.width, activation=activation,
                                                         kernel_initializer=self.kernel_initializer,
                                                         dtype=self.dtype_policy, name=f"res_block{i}"))
        for i in range(num_upsample):
            setattr(self, f"upsample_conv{i}", ConvBlock(
                self.width // 2 ** (i + 1), upsample_kernel, norm=upsample_norm, activation=activation,
                kernel_initializer=self.kernel_initializer, upsample=True, dtype=self.dtype_policy,
                name=f"upsample_conv{i}"))
        # float32: the image and its tanh are the generator's outputs (losses, discriminators).
        self.output_conv = ConvBlock(output_channels, output_kernel, activation="tanh",
                                     kernel_initializer=self.kernel_initializer, dtype="float32", name="output_conv")

    @property
    def res_blocks(self):
        return [getattr(self, f"res_block{i}") for i in range(self.num_res_blocks)]

    @property
    def upsample_convs(self):
        return [getattr(self, f"upsample_conv{i}") for i in range(self.num_upsample)]

    @property
    def num_adain_params(self):
        """Length of ``adain_params``: 2 AdaIN layers per block x (bias + scale) x W."""
        return self.num_res_blocks * 2 * 2 * self.width

    def build(self, content_shape, adain_params_shape):
        if content_shape[-1] != self.content_channels:
            raise ValueError(f"Decoder expects {self.content_channels}-channel content maps, got {content_shape}")
        if adain_params_shape[-1] != self.num_adain_params:
            raise ValueError(f"Decoder expects {self.num_adain_params} AdaIN parameters, got {adain_params_shape}")
        shape = tuple(content_shape)
        if self.input_conv is not None:
            build_sublayer(self.input_conv, shape)
            shape = self.input_conv.compute_output_shape(shape)
        params_shape = (content_shape[0], self.width)
        for block in self.res_blocks:
            build_sublayer(block, shape, *[params_shape] * 4)
        for conv in self.upsample_convs:
            build_sublayer(conv, shape)
            shape = conv.compute_output_shape(shape)
        build_sublayer(self.output_conv, shape)

    def call(self, content, adain_params):
        # Per AdaIN layer: bias then scale, [B, C] each (official layout).
        params = tf.split(adain_params, 4 * self.num_res_blocks, axis=-1)
        x = content  # [B, h, w, C]
        if self.input_conv is not None:
            x = self.input_conv(x)  # [B, h, w, W]
        for i, block in enumerate(self.res_blocks):
            beta1, gamma1, beta2, gamma2 = params[4 * i:4 * i + 4]
            x = block(x, gamma1, beta1, gamma2, beta2)  # [B, h, w, W]
        for conv in self.upsample_convs:
            x = conv(x)  # [B, 2h, 2w, W/2] per upsampling
        return self.output_conv(x)  # [B, h * 2^n, w * 2^n, 3], float32 in [-1, 1]

    def compute_output_shape(self, content_shape, adain_params_shape):
        batch, height, width, _ = content_shape
        scale = 2 ** self.num_upsample
        return (batch, None if height is None else height * scale, None if width is None else width * scale,
                self.output_channels)

    def get_config(self):
        return {**super().get_config(), "content_channels": self.content_channels, "width": self.width,
                "num_res_blocks": self.num_res_blocks, "num_upsample": self.num_upsample,
                "upsample_kernel": self.upsample_kernel, "upsample_norm": self.upsample_norm,
                "output_channels": self.output_channels, "output_kernel": self.output_kernel,
                "activation": self.activation, "kernel_initializer": self.kernel_initializer}


@keras.saving.register_keras_serializable(package="jsia_tf")
class Generator(keras.Model):
    """The generator of one modality: E^s_m, the AdaIN MLP and D_m (Sec. 3.1).

    ``encode_style(images)`` is Eq. 1 and ``decode(content, style)`` is Eq. 3 (the
    content maps come from E^i = E^sl of the backbone). Cross-modality generation
    decodes one modality's content with the other modality's style, with the
    generator of the style's modality: ``X_ir2rgb = G_rgb.decode(M^i_ir,
    G_rgb.encode_style(X_rgb))`` (the paper's Eq. 3 writes D_ir there, a slip: the
    result is an RGB image). Calling the model, ``G_m(content, images)``, reconstructs
    images from their own content and style (the inner term of Eq. 4).

    Paper configuration: ``jsia_tf.config.ModelConfig``'s defaults and ``num_upsample=2``.
    Official configuration: ``style_num_downsample=4, num_res_blocks=2, num_upsample=1``
    (the rest the paper's): style encoder 709,824, MLP 625,152 and decoder 3,198,723
    parameters.

    Args:
      content_channels: channels of the modality-invariant maps (256 for ResNet-50).
      style_dim: length of the style code.
      style_base_width, style_num_downsample, style_max_width, style_first_kernel:
        :class:`StyleEncoder` ``base_width``, ``num_downsample``, ``max_width``,
        ``first_kernel``.
      mlp_hidden_dim, mlp_num_layers: :class:`~jsia_tf.models.layers.MLP` sizes.
      num_res_blocks, num_upsample, upsample_norm, decoder_width: :class:`Decoder`
        ``num_res_blocks``, ``num_upsample``, ``upsample_norm``, ``width``.
      activation: activation of every hidden layer.
      kernel_initializer: see ``layers.initializer_config``.
    """

    def __init__(self, content_channels, style_dim, style_base_width, style_num_downsample, style_max_width,
                 mlp_hidden_dim, num_res_blocks, num_upsample, style_first_kernel=7, mlp_num_layers=3,
                 upsample_norm="layer", activation="relu", kernel_initializer=None, decoder_width=None, **kwargs):
        super().__init__(**kwargs)
        self.content_channels = content_channels
        self.style_dim = style_dim
        self.style_base_width = style_base_width
        self.style_num_downsample = style_num_downsample
        self.style_max_width = style_max_width
        self.style_first_kernel = style_first_kernel
        self.mlp_hidden_dim = mlp_hidden_dim
        self.mlp_num_layers = mlp_num_layers
        self.num_res_blocks = num_res_blocks
        self.num_upsample = num_upsample
        self.upsample_norm = upsample_norm
        self.decoder_width = decoder_width
        self.activation = activation
        self.kernel_initializer = initializer_config(kernel_initializer)
        self.style_encoder = StyleEncoder(style_dim, base_width=style_base_width, num_downsample=style_num_downsample,
                                          max_width=style_max_width, first_kernel=style_first_kernel,
                                          activation=activation, kernel_initializer=self.kernel_initializer,
                                          dtype=self.dtype_policy, name="style_encoder")
        self.decoder = Decoder(content_channels, num_res_blocks=num_res_blocks, num_upsample=num_upsample,
                               upsample_norm=upsample_norm, activation=activation,
                               kernel_initializer=self.kernel_initializer, width=decoder_width,
                               dtype=self.dtype_policy, name="decoder")
        self.mlp = MLP(self.decoder.num_adain_params, hidden_dim=mlp_hidden_dim, num_layers=mlp_num_layers,
                       activation=activation, kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy,
                       name="mlp")

    def build(self, content_shape, images_shape):
        build_sublayer(self.style_encoder, images_shape)
        build_sublayer(self.mlp, (images_shape[0], self.style_dim))
        build_sublayer(self.decoder, content_shape, (content_shape[0], self.decoder.num_adain_params))

    def encode_style(self, images):
        """E^s_m (Eq. 1): unit-range images [B, H, W, 3] -> style codes [B, style_dim]."""
        return self.style_encoder(images)

    def decode(self, content, style):
        """D_m (Eq. 3): content [B, h, w, C] + style [B, style_dim] -> unit-range images
        [B, h * 2^num_upsample, w * 2^num_upsample, 3] (float32)."""
        return self.decoder(content, self.mlp(style))  # AdaIN parameters [B, num_adain_params]

    def call(self, content, images):
        """Self-reconstruction D_m(M^i, E^s_m(X)) (Eq. 4's inner term)."""
        return self.decode(content, self.encode_style(images))

    def get_config(self):
        return {**super().get_config(), "content_channels": self.content_channels, "style_dim": self.style_dim,
                "style_base_width": self.style_base_width, "style_num_downsample": self.style_num_downsample,
                "style_max_width": self.style_max_width, "style_first_kernel": self.style_first_kernel,
                "mlp_hidden_dim": self.mlp_hidden_dim, "mlp_num_layers": self.mlp_num_layers,
                "num_res_blocks": self.num_res_blocks, "num_upsample": self.num_upsample,
                "upsample_norm": self.upsample_norm, "activation": self.activation,
                "kernel_initializer": self.kernel_initializer, "decoder_width": self.decoder_width}
