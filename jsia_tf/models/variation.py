"""Module V: a VAE over modality-invariant feature maps (paper Sec. 3.2, Eq. 9) and the
unseen-identity mixing of Eq. 14 (Sec. 3.3).

The paper gives V's losses (Eq. 10) but no architecture, and the official code has no V
at all; this design keeps the latent code spatial, so that the decoder can rebuild a map
that module G's decoders accept:

  E^v trunk: M^i [B, h, w, C] -> 3x3 conv (hidden) -> ``num_downsample`` x 4x4 stride-2
             conv (hidden) -> [B, h', w', hidden], h' = h / 2^num_downsample;
  E^v_u:     1x1 conv -> mean u [B, h', w', latent_channels];
  E^v_tau:   1x1 conv -> softplus + ``min_std`` -> standard deviation tau > 0, same shape;
  z = u + tau * eps, eps ~ N(0, I) (reparameterisation), only when training; z = u
             at inference;
  D^v:       3x3 conv (hidden) -> ``num_downsample`` x [nearest x2 upsampling, 3x3 conv
             (hidden)] -> 3x3 conv to C -> M^rcon [B, h, w, C].

All convs are reflection-padded with ReLU (none after the heads and, by default, none
after the last conv: M^rcon is a regression target of the L1 loss of Eq. 10).
softplus keeps tau positive with a gradient everywhere and, unlike exp(log tau), cannot
overflow; ``min_std`` keeps it away from 0. h and w must be divisible by
2^num_downsample, and the latent map at least 2x2 (reflection padding).

The heads, the sampling and D^v's last conv run in float32 under mixed precision, so z,
u, tau and M^rcon are float32.
"""

import keras
import tensorflow as tf

from jsia_tf.models.layers import ConvBlock, build_sublayer, initializer_config


def mix(a, b, alpha):
    """Eq. 14: ``alpha * a + (1 - alpha) * b`` per sample.

    Used for latent codes z [B, h', w', Z] and style codes m^s [B, style_dim] alike.

    Args:
      a, b: [B, ...] codes of the same shape.
      alpha: [B] mixing ratios in [0, 1] (or a scalar, for every sample).
    Returns:
      [B, ...] in a's dtype.
    """
    a = tf.convert_to_tensor(a)
    b = tf.cast(b, a.dtype)
    alpha = tf.reshape(tf.cast(alpha, a.dtype), [-1] + [1] * (a.shape.rank - 1))  # [B, 1, ..., 1]
    return alpha * a + (1.0 - alpha) * b


@keras.saving.register_keras_serializable(package="jsia_tf")
class VariationModule(keras.Model):
    """Module V (Sec. 3.2): E^v = (trunk, E^v_u, E^v_tau) and D^v (Eq. 9).

    ``call(M, training)`` encodes: it returns ``(z, u, tau)``, z sampled with
    eps from the module's own ``keras.random.SeedGenerator`` when ``training`` is true
    and equal to u otherwise. ``decode(z)`` is D^v. Eq. 10's losses take M,
    ``decode(z)``, u and tau (``jsia_tf.losses``).

    Args:
      feature_channels: channels C of the modality-invariant maps M^i (256 for
        ResNet-50's layer1).
      hidden_channels: width of the encoder trunk and the decoder.
      latent_channels: channels of z, u and tau.
      num_downsample: stride-2 convs in the encoder (x2 upsamplings in the decoder).
      min_std: added to softplus for tau.
      output_activation: activation of D^v's last conv (None: linear; "relu" makes
        M^rcon non-negative like the post-ReLU maps of ResNet-50's layer1).
      activation: activation of the hidden convs.
      kernel_initializer: see ``layers.initializer_config``.
      seed: seed of the reparameterisation noise (None: a random seed).
    """

    def __init__(self, feature_channels, hidden_channels, latent_channels, num_downsample, min_std=1e-4,
                 output_activation=None, activation="relu", kernel_initializer=None, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.feature_channels = feature_channels
        self.hidden_channels = hidden_channels
        self.latent_channels = latent_channels
        self.num_downsample = num_downsample
        self.min_std = min_std
        self.output_activation = output_activation
        self.activation = activation
        self.kernel_initializer = initializer_config(kernel_initializer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")

        def conv(filters, kernel_size, name, strides=1, activation=activation, dtype=self.dtype_policy):
            return ConvBlock(filters, kernel_size, strides=strides, activation=activation,
                             kernel_initializer=self.kernel_initializer, dtype=dtype, name=name)

        self.encoder_conv = conv(hidden_channels, 3, "encoder_conv")
        for i in range(num_downsample):
            setattr(self, f"encoder_down{i}", conv(hidden_channels, 4, f"encoder_down{i}", strides=2))
        self.mean_head = conv(latent_channels, 1, "mean_head", activation=None, dtype="float32")
        self.std_head = conv(latent_channels, 1, "std_head", activation=None, dtype="float32")
        self.decoder_conv = conv(hidden_channels, 3, "decoder_conv")
        self.decoder_upsample = keras.layers.UpSampling2D(2, interpolation="nearest", dtype=self.dtype_policy,
                                                          name="decoder_upsample")
        for i in range(num_downsample):
            setattr(self, f"decoder_up_conv{i}", conv(hidden_channels, 3, f"decoder_up_conv{i}"))
        self.decoder_output_conv = conv(feature_channels, 3, "decoder_output_conv", activation=output_activation,
                                        dtype="float32")

    @property
    def encoder_layers(self):
        """E^v's trunk: [B, h, w, C] -> [B, h', w', hidden]."""
        return [self.encoder_conv] + [getattr(self, f"encoder_down{i}") for i in range(self.num_downsample)]

    @property
    def decoder_layers(self):
        """D^v: [B, h', w', Z] -> [B, h, w, C]."""
        upsampling = []
        for i in range(self.num_downsample):
            upsampling += [self.decoder_upsample, getattr(self, f"decoder_up_conv{i}")]
        return [self.decoder_conv, *upsampling, self.decoder_output_conv]

    def build(self, input_shape):
        if input_shape[-1] != self.feature_channels:
            raise ValueError(f"VariationModule expects {self.feature_channels}-channel maps, got {input_shape}")
        shape = tuple(input_shape)
        for layer in self.encoder_layers:
            build_sublayer(layer, shape)
            shape = layer.compute_output_shape(shape)
        build_sublayer(self.mean_head, shape)
        build_sublayer(self.std_head, shape)
        shape = self.mean_head.compute_output_shape(shape)
        for layer in self.decoder_layers:
            build_sublayer(layer, shape)
            shape = layer.compute_output_shape(shape)

    def call(self, feature_maps, training=None):
        """E^v (Eq. 9): M^i [B, h, w, C] -> (z, u, tau), each float32 [B, h', w', Z]."""
        trunk = feature_maps  # [B, h, w, C]
        for layer in self.encoder_layers:
            trunk = layer(trunk)  # [B, h', w', hidden] at the end
        u = self.mean_head(trunk)  # [B, h', w', Z]
        tau = tf.nn.softplus(self.std_head(trunk)) + self.min_std  # [B, h', w', Z], > 0
        if training:
            eps = keras.random.normal(tf.shape(u), dtype=u.dtype, seed=self.seed_generator)
            z = u + tau * eps  # reparameterisation: gradients reach u and tau
        else:
            z = u
        return z, u, tau

    def decode(self, z):
        """D^v (Eq. 9): z [B, h', w', Z] -> M^rcon [B, h' * 2^num_downsample, w' *
        2^num_downsample, C] (float32)."""
        x = z
        for layer in self.decoder_layers:
            x = layer(x)  # x2 upsampling per UpSampling2D
        return x

    def get_config(self):
        return {**super().get_config(), "feature_channels": self.feature_channels,
                "hidden_channels": self.hidden_channels, "latent_channels": self.latent_channels,
                "num_downsample": self.num_downsample, "min_std": self.min_std,
                "output_activation": self.output_activation, "activation": self.activation,
                "kernel_initializer": self.kernel_initializer, "seed": self.seed}
