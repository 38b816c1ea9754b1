"""Module F: set- and instance-level feature alignment and the identity classifiers (paper Sec. 3.3, 3.4, 4.2).

- E^sl, the set-level encoder (shared with module G's modality-invariant encoder E^i):
  M = E^sl(X), [B, H, W, 3] -> [B, H/4, W/4, C_sl].
- E^il, the instance-level encoder: T = E^il(M), -> [B, h, w, D] (h = H/16 with last stride 1).
- C, the identity classifier (:class:`IdentityClassifier`): V = GAP(T) -> batch norm ->
  fully connected -> logits (Sec. 4.2). Its probabilities are p in Eq. 11 (instance-level
  alignment) and Eq. 13 (identity loss); V is what the triplet loss of Eq. 13 compares.
- C^1..C^n, the local-region classifiers of Eq. 12 ("Improving IL with Local Regions",
  following Sun et al. 2018, PCB): T is split along its height into n horizontal stripes
  T^k, each average-pooled to t^k [B, D] and classified by its own C^k (weights not
  shared). When h is not a multiple of n, the stripes have PyTorch
  ``AdaptiveAvgPool2d((n, 1))``'s bounds, rows [floor(k h / n), ceil((k + 1) h / n)), so
  neighbouring stripes may share a row. The paper does not give n; the config's default,
  6 (``config.DEFAULT_NUM_REGIONS``), is PCB's. ``num_regions=0`` leaves the local
  classifiers out (the ablation without LR).
- Eq. 17, the test-time feature: :meth:`FeatureAlignment.embed`, L2-normalised for the
  cosine similarity of Sec. 3.4.

Where this follows the official code rather than the paper's text:
- C is BNNeck (Luo et al. 2019): BN1d with its bias frozen at zero (here: no beta at
  all), then a linear layer without bias initialised N(0, 0.001). The paper: "a batch
  normalization, a fully-connected layer and a soft-max layer" (Sec. 4.2); Sec. 3.3 calls
  C "a global average pooling and a fully-connected layer".
- Eq. 17 names V = E^il(E^sl(X)) as the test feature; the official code evaluates with the
  BN output. ``test_features`` picks either ("bn", the default, or "pool").
- ``gray_input=True`` converts every image to gray before E^sl, as the official code does
  in training, alignment and test (its ``togray``). The paper does not mention it.

Mixed precision: the classifiers run in float32 whatever the global policy (their
batch-norm statistics and logits need it), so V, the BN features and every logit are
float32; T keeps E^il's compute dtype.

Sub-layers are attributes (``local_classifier0``, ``local_classifier1``, ...), listed back
by :attr:`FeatureAlignment.local_classifiers`, never items of a Python list: with Keras 3.15
on TensorFlow, ``tf.train.Checkpoint`` silently skips layers held in lists.
"""

import keras
import tensorflow as tf

from jsia_tf.config import TEST_FEATURES
from jsia_tf.data.pipeline import CAFFE_MEAN_BGR
from jsia_tf.models.layers import BatchNormalization, build_sublayer

# Luminance weights of the official `togray` (ITU-R BT.601: 0.2989 R + 0.5870 G +
# 0.1140 B), in the B, G, R order of caffe-normalised images.
LUMINANCE_BGR = (0.1140, 0.5870, 0.2989)
# PyTorch nn.BatchNorm1d defaults: eps 1e-5, running averages updated with momentum 0.1,
# i.e. Keras momentum 0.9 (Keras keeps `momentum` of the old value).
CLASSIFIER_BN_EPSILON = 1e-5
CLASSIFIER_BN_MOMENTUM = 0.9
# The official classifier's linear layer is initialised N(0, 0.001) (BNNeck).
CLASSIFIER_INIT_STDDEV = 0.001


def to_gray(images):
    """The official ``togray``: images to gray, replicated to 3 channels.

    Works on caffe-normalised BGR images (:func:`jsia_tf.data.pipeline.normalize`): the
    mean pixel is added back, the luminance 0.2989 R + 0.5870 G + 0.1140 B of the pixels
    is taken, replicated to B, G and R and normalised again. A gray image (equal R, G, B
    pixels p) comes back as gray pixels 0.9999 p, the weights' sum. (The official code
    applies the weights to its normalised values, i.e. to pixels shifted and scaled per
    channel, which changes even a gray image.)

    Args:
      images: [B, H, W, 3] caffe-normalised BGR images.
    Returns:
      [B, H, W, 3] caffe-normalised gray images, in the input's dtype (computed in
      float32).
    """
    images = tf.convert_to_tensor(images)
    mean = tf.constant(CAFFE_MEAN_BGR, tf.float32)  # [3]
    pixels = tf.cast(images, tf.float32) + mean  # [B, H, W, 3] BGR pixels
    gray = tf.reduce_sum(pixels * tf.constant(LUMINANCE_BGR, tf.float32), axis=-1, keepdims=True)  # [B, H, W, 1]
    return tf.cast(gray - mean, images.dtype)  # [B, H, W, 3], broadcast over the channels


def stripe_bounds(height, num_regions):
    """Row bounds of the horizontal stripes of Eq. 12, as PyTorch ``AdaptiveAvgPool2d``.

    Stripe k covers rows [floor(k h / n), ceil((k + 1) h / n)): every stripe holds at
    least one row, neighbouring stripes overlap when n does not divide h.

    Args:
      height: h, an int or a scalar int tensor.
      num_regions: n > 0, a Python int.
    Returns:
      a tuple of n (start, end) pairs (ints, or scalar tensors if `height` is one).
    """
    return tuple((k * height // num_regions, -(-(k + 1) * height // num_regions)) for k in range(num_regions))


def pool_stripes(feature_maps, num_regions):
    """Averages each of `num_regions` horizontal stripes of T (Eq. 12's t^k).

    Args:
      feature_maps: T, [B, h, w, D].
      num_regions: n > 0.
    Returns:
      a tuple of n float32 [B, D] vectors, the mean of the stripe's rows and columns.
    """
    feature_maps = tf.cast(feature_maps, tf.float32)
    bounds = stripe_bounds(tf.shape(feature_maps)[1], num_regions)
    return tuple(tf.reduce_mean(feature_maps[:, start:end], axis=[1, 2]) for start, end in bounds)  # n x [B, D]


def eq17_embedding(images, set_level_encoder, instance_level_encoder, batch_norm=None, gray_input=False):
    """Eq. 17, V = E^il(E^sl(X)), in inference mode, from the parts that compute it.

    Shared by :meth:`FeatureAlignment.embed` and the exported SavedModel
    (``jsia_tf.export``), which holds only these parts.

    Args:
      images: caffe-normalised BGR [B, H, W, 3].
      batch_norm: the classifier's BN layer for its output (official), None for V.
      gray_input: convert to gray first, as :meth:`FeatureAlignment.set_level`.
    Returns:
      float32 [B, D], L2-normalised.
    """
    if gray_input:
        images = to_gray(images)
    feature_map = instance_level_encoder(set_level_encoder(images, training=False), training=False)
    features = tf.reduce_mean(tf.cast(feature_map, tf.float32), axis=[1, 2])  # V, [B, D]
    if batch_norm is not None:
        features = tf.cast(batch_norm(tf.cast(features, batch_norm.compute_dtype), training=False), tf.float32)
    return tf.math.l2_normalize(features, axis=-1)  # [B, D]


@keras.saving.register_keras_serializable(package="jsia_tf")
class IdentityClassifier(keras.layers.Layer):
    """The identity classifier C (and each C^k): BN + a fully connected layer (Sec. 4.2).

    As the official code (BNNeck): batch norm without a shift (the official BN1d bias is
    frozen at zero; here beta does not exist), scale gamma starting at 1, PyTorch's eps
    and momentum; then a linear layer without bias, kernel N(0, 0.001). The softmax is the
    losses' job. Runs in float32 unless a dtype is given.

    Args:
      num_classes: number of training identities.
      synchronized: batch-norm statistics over all replicas of a tf.distribute strategy.
    """

    def __init__(self, num_classes, synchronized=False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"IdentityClassifier num_classes={num_classes!r}: expected a positive integer")
        self.num_classes = num_classes
        self.synchronized = synchronized
        self.batch_norm = BatchNormalization(
            center=False, epsilon=CLASSIFIER_BN_EPSILON, momentum=CLASSIFIER_BN_MOMENTUM, synchronized=synchronized,
            dtype=self.dtype_policy, name="batch_norm")
        self.dense = keras.layers.Dense(
            num_classes, use_bias=False, kernel_initializer=keras.initializers.RandomNormal(stddev=CLASSIFIER_INIT_STDDEV),
            dtype=self.dtype_policy, name="dense")

    def build(self, features_shape):
        build_sublayer(self.batch_norm, features_shape)
        build_sublayer(self.dense, features_shape)

    def call(self, features, training=None):
        """features [B, D] -> (BN features [B, D], logits [B, num_classes])."""
        bn_features = self.batch_norm(tf.cast(features, self.compute_dtype), training=training)  # [B, D]
        return bn_features, self.dense(bn_features)  # [B, num_classes]

    def compute_output_shape(self, features_shape):
        return tuple(features_shape), (features_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "synchronized": self.synchronized}


class FeatureAlignment(keras.Model):
    """Module F (Sec. 3.3): E^sl, E^il, C and the local-region classifiers C^1..C^n.

    ``call(X)`` runs :meth:`instance_level` on :meth:`set_level`'s maps. The trainer
    calls the two halves itself where it needs M (the generators decode E^sl's maps).
    Losses: Eq. 11 takes ``logits``, Eq. 12 ``local_logits``, Eq. 13 ``logits`` (cls)
    and ``features`` (triplet), Eq. 15 ``logits``.

    ``get_config`` is not supported: the encoders are built models passed in (build
    them with :func:`jsia_tf.models.backbone.build_backbone`); save weights with
    ``tf.train.Checkpoint`` or ``save_weights``.

    Args:
      set_level_encoder: E^sl, keras.Model [B, H, W, 3] caffe-normalised BGR ->
        [B, H/4, W/4, C_sl].
      instance_level_encoder: E^il, keras.Model [B, H/4, W/4, C_sl] -> [B, h, w, D].
      num_classes: number of training identities.
      num_regions: n, the horizontal stripes of Eq. 12; 0 disables the local classifiers.
      gray_input: convert images to gray before E^sl (:func:`to_gray`, the official
        code's input).
      test_features: the vector :meth:`embed` returns, one of :data:`TEST_FEATURES`.
      synchronized_bn: the classifiers' batch norm synchronised across replicas.
    """

    def __init__(self, set_level_encoder, instance_level_encoder, num_classes, num_regions, gray_input=False,
                 test_features="bn", synchronized_bn=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_regions, int) or num_regions < 0:
            raise ValueError(f"FeatureAlignment num_regions={num_regions!r}: expected an integer >= 0")
        if test_features not in TEST_FEATURES:
            raise ValueError(f"FeatureAlignment test_features={test_features!r}: expected one of {TEST_FEATURES}")
        self.set_level_encoder = set_level_encoder
        self.instance_level_encoder = instance_level_encoder
        self.num_classes = num_classes
        self.num_regions = num_regions
        self.gray_input = gray_input
        self.test_features = test_features
        self.synchronized_bn = synchronized_bn
        self.classifier = IdentityClassifier(num_classes, synchronized=synchronized_bn, name="classifier")
        for k in range(num_regions):
            setattr(self, f"local_classifier{k}",
                    IdentityClassifier(num_classes, synchronized=synchronized_bn, name=f"local_classifier{k}"))

    @property
    def local_classifiers(self):
        """(C^1, ..., C^n) of Eq. 12; empty when ``num_regions`` is 0."""
        return tuple(getattr(self, f"local_classifier{k}") for k in range(self.num_regions))

    def build(self, images_shape):
        maps_shape = self.set_level_encoder.compute_output_shape(tuple(images_shape))
        feature_shape = self.instance_level_encoder.compute_output_shape(maps_shape)
        vector_shape = (images_shape[0], feature_shape[-1])  # [B, D]
        for classifier in (self.classifier, *self.local_classifiers):
            build_sublayer(classifier, vector_shape)

    def set_level(self, images, training=None):
        """M = E^sl(X) (Sec. 3.3): [B, H, W, 3] caffe-normalised BGR -> [B, H/4, W/4, C_sl]."""
        if self.gray_input:
            images = to_gray(images)  # [B, H, W, 3], equal channels in pixels
        return self.set_level_encoder(images, training=training)

    def instance_level(self, set_level_maps, training=None):
        """T = E^il(M), V = GAP(T) and the classifiers' outputs (Eq. 11-13).

        Args:
          set_level_maps: M, [B, H/4, W/4, C_sl].
        Returns:
          a dict: "feature_map" T [B, h, w, D]; "features" V [B, D] float32 (pre-BN, the
          triplet loss's input); "bn_features" [B, D] and "logits" [B, num_classes] of C;
          "local_logits", a tuple of n [B, num_classes], C^k on the k-th stripe of T.
        """
        feature_map = self.instance_level_encoder(set_level_maps, training=training)  # [B, h, w, D]
        features = tf.reduce_mean(tf.cast(feature_map, tf.float32), axis=[1, 2])  # [B, D]
        bn_features, logits = self.classifier(features, training=training)
        local_logits = ()
        if self.num_regions:
            stripes = pool_stripes(feature_map, self.num_regions)  # n x [B, D]
            local_logits = tuple(classifier(stripe, training=training)[1]
                                 for classifier, stripe in zip(self.local_classifiers, stripes))
        return {"feature_map": feature_map, "features": features, "bn_features": bn_features, "logits": logits,
                "local_logits": local_logits}

    def call(self, images, training=None):
        """:meth:`instance_level` of :meth:`set_level`'s maps of images [B, H, W, 3]."""
        return self.instance_level(self.set_level(images, training=training), training=training)

    def embed(self, images):
        """Eq. 17 in inference mode: L2-normalised test features [B, D] float32.

        The classifier's BN output (``test_features="bn"``, official) or V ("pool"),
        each divided by its L2 norm so that dot products are the cosine similarities of
        Sec. 3.4. The classifier's FC and the local classifiers are not run.
        """
        return eq17_embedding(images, self.set_level_encoder, self.instance_level_encoder,
                              self.classifier.batch_norm if self.test_features == "bn" else None, self.gray_input)

    def get_config(self):
        raise NotImplementedError(
            "FeatureAlignment holds built encoders passed to its constructor and cannot be rebuilt from a config; "
            "build it again with jsia_tf.models.backbone.build_backbone and restore its weights.")
