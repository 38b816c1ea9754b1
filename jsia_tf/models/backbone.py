"""The re-ID backbone: ResNet-50, last stride 1, split into E^sl and E^il (paper Sec. 3.3, 4.2).

Module F encodes images with an ImageNet-pretrained ResNet-50 whose last down-sampling
stride is set to 1 (Sec. 4.2), cut in two:

- E^sl, the set-level encoder: the stem and the first residual stage ("the first two
  layers of ResNet-50"), [B, H, W, 3] -> [B, H/4, W/4, 256]. Its feature maps are also the
  modality-invariant content the generators decode (Sec. 3.1).
- E^il, the instance-level encoder: the other three stages, -> [B, H/16, W/16, 2048]
  ([B, 16, 8, 2048] for 256x128 images).

The ResNet-50 is `keras.applications.ResNet50(include_top=False)` rebuilt layer for layer
under the same layer names (`conv1_conv`, `conv2_block1_0_conv`, ... `conv5_block3_3_bn`;
106 layers with weights), so its ImageNet weights, or a local file of them, load by name.
With ``last_stride=2``, E^il(E^sl(x)) is exactly keras.applications' network; with
``last_stride=1``, `conv5_block1_1_conv` and `conv5_block1_0_conv` (the first block of the
last stage strides its first 1x1 conv and its shortcut) get stride 1.

Where this differs from the official PyTorch code (torchvision's ResNet-50):
- keras.applications' ResNet-50 is ResNet v1 (the original Caffe model, which its ImageNet
  weights come from): a down-sampling block strides its first 1x1 conv; torchvision's
  (v1.5) strides the 3x3 conv. Parameter counts do not depend on where the stride is.
- Its convolutions have biases (the ImageNet weights include them): 1,472 more trainable
  parameters in E^sl and 25,088 in E^il than in PyTorch. A bias followed by batch norm
  only shifts the moving mean and gets a zero gradient in training mode.
- The stem keeps its ReLU after `conv1_bn`, as keras.applications, torchvision and the
  ImageNet training had it. The official E^sl (conv1, bn1, maxpool, layer1) leaves it out.
- The ImageNet weights expect caffe preprocessing (RGB -> BGR, minus the ImageNet mean, no
  scaling), not torchvision's mean/std.

A small ResNet-18 ("resnet18": basic blocks [2, 2, 2, 2], widths configurable, conv layers
without biases as in torchvision, no pretrained weights) has the same split and names, for
CPU demos and tests.
"""

import dataclasses
import functools
import os

import h5py
import keras

from jsia_tf.config import BACKBONES, DEFAULT_WIDTHS
from jsia_tf.models import layers
_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet18": (2, 2, 2, 2)}
_EXPANSION = {"resnet50": 4, "resnet18": 1}
# keras.applications' batch-norm epsilon; its ImageNet weights were converted with it.
BN_EPSILON = 1.001e-5
# The training flag that names the weights; errors about the weights name it.
WEIGHTS_FLAG = "--backbone_weights"
# Error messages list at most this many layer names.
_MAX_NAMES_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class Backbone:
    """The two halves of the re-ID ResNet; they share no layer and no variable.

    Attributes:
      set_level_encoder: E^sl, keras.Model [B, H, W, 3] -> [B, H/4, W/4, out_channels].
      instance_level_encoder: E^il, keras.Model [B, H/4, W/4, out_channels] ->
        [B, H/16, W/16, feature_dim] (H/32, W/32 with last stride 2).
      out_channels: channels of E^sl's feature maps (ResNet-50: 256).
      feature_dim: channels of E^il's feature maps (ResNet-50: 2048).
    """

    set_level_encoder: keras.Model
    instance_level_encoder: keras.Model
    out_channels: int
    feature_dim: int

    def __call__(self, images, training=None):
        """E^il(E^sl(images)): [B, H, W, 3] -> [B, H/16, W/16, feature_dim]."""
        features = self.set_level_encoder(images, training=training)
        return self.instance_level_encoder(features, training=training)


def build_backbone(name="resnet50", weights="none", last_stride=1, widths=DEFAULT_WIDTHS, synchronized_bn=False):
    """Builds E^sl and E^il and loads their weights.

    Args:
      name: "resnet50" or "resnet18".
      weights: "none" (or None) for random initialisation; "imagenet" for
        keras.applications' ImageNet weights (downloaded once into the Keras cache,
        `$KERAS_HOME/models`, default ~/.keras/models); or the path of a weights file
        of `keras.applications.ResNet50(include_top=False)`: a legacy `.h5` such as
        `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`, or a Keras 3
        `.weights.h5`. ResNet-50 only. Every layer is copied by name; a file whose layer
        names differ from the network's is refused.
      last_stride: stride of the last stage, 1 (the paper) or 2 (the classification
        network).
      widths: widths of the four stages; the stem has widths[0]. ImageNet weights
        need the default.
      synchronized_bn: batch norm with statistics over all replicas of a
        tf.distribute strategy (TensorFlow backend); the weights are the same.

    Returns:
      A :class:`Backbone`.

    Raises:
      FileNotFoundError: `weights` is neither "none", "imagenet" nor an existing file.
      ValueError: a bad argument, or a weights file that does not fit the network.
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone name={name!r}: expected one of {BACKBONES}")
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride={last_stride!r}: expected 1 or 2")
    widths = tuple(widths)
    if len(widths) != 4 or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"widths={widths!r}: expected 4 positive integers")
    weights = "none" if weights is None else os.fspath(weights)
    if weights != "none":
        if name != "resnet50":
            raise ValueError(f"{WEIGHTS_FLAG}={weights!r}: {name} has no pretrained weights; expected 'none'")
        if weights != "imagenet" and not os.path.isfile(weights):
            raise FileNotFoundError(
                f"{WEIGHTS_FLAG}={weights!r}: no such file; expected 'none', 'imagenet' or the path of a "
                "keras.applications ResNet50(include_top=False) weights file (.h5 or .weights.h5)")

    # The weights first: a file that does not fit fails before the network is built.
    source = None
    if weights == "imagenet":
        source = keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=(None, None, 3))
        where = "keras.applications ResNet50 ImageNet weights"
    elif weights != "none":
        source = _resnet50_from_file(weights)
        where = f"{WEIGHTS_FLAG}={weights!r}"
    set_level_encoder, instance_level_encoder = _build_encoders(name, widths, last_stride, synchronized_bn)
    if source is not None:
        _copy_weights_by_name(source, (set_level_encoder, instance_level_encoder), where)
    expansion = _EXPANSION[name]
    return Backbone(set_level_encoder, instance_level_encoder,
                    out_channels=expansion * widths[0], feature_dim=expansion * widths[3])


def _build_encoders(name, widths, last_stride, synchronized_bn):
    """(E^sl, E^il) as two functional keras.Models with keras.applications' layer names."""
    block = _bottleneck_block if name == "resnet50" else _basic_block
    expansion = _EXPANSION[name]
    stage_blocks = _BLOCKS[name]
    # keras.applications' ResNet-50 convs have biases (its weights do); torchvision's do not.
    use_bias = name == "resnet50"
    batch_norm = functools.partial(layers.BatchNormalization, epsilon=BN_EPSILON, synchronized=synchronized_bn)
    stage = functools.partial(_stage, block=block, expansion=expansion, batch_norm=batch_norm, use_bias=use_bias)

    images = keras.Input((None, None, 3), name="images")
    x = _stem(images, widths[0], batch_norm, use_bias)  # [B, H/4, W/4, widths[0]]
    x = stage(x, widths[0], stage_blocks[0], stride=1, name="conv2")  # [B, H/4, W/4, expansion * widths[0]]
    set_level_encoder = keras.Model(images, x, name="set_level_encoder")

    features = keras.Input((None, None, x.shape[-1]), name="set_level_features")
    x = stage(features, widths[1], stage_blocks[1], stride=2, name="conv3")  # [B, H/8, W/8, .]
    x = stage(x, widths[2], stage_blocks[2], stride=2, name="conv4")  # [B, H/16, W/16, .]
    x = stage(x, widths[3], stage_blocks[3], stride=last_stride, name="conv5")  # [B, H/16, W/16, .] (stride 1)
    instance_level_encoder = keras.Model(features, x, name="instance_level_encoder")
    return set_level_encoder, instance_level_encoder


def _stem(x, filters, batch_norm, use_bias):
    """conv 7x7/2, BN, ReLU, max pool 3x3/2: [B, H, W, 3] -> [B, H/4, W/4, filters]."""
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = keras.layers.Conv2D(filters, 7, strides=2, use_bias=use_bias, name="conv1_conv")(x)  # [B, H/2, W/2, filters]
    x = batch_norm(name="conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)  # [B, H/4, W/4, filters]


def _stage(x, width, blocks, stride, name, block, expansion, batch_norm, use_bias):
    """`blocks` residual blocks; the first strides and, if the shape changes, projects the shortcut."""
    conv_shortcut = stride != 1 or x.shape[-1] != expansion * width
    x = block(x, width, stride, conv_shortcut, f"{name}_block1", batch_norm, use_bias)
    for i in range(2, blocks + 1):
        x = block(x, width, 1, False, f"{name}_block{i}", batch_norm, use_bias)
    return x


def _bottleneck_block(x, width, stride, conv_shortcut, name, batch_norm, use_bias):
    """keras.applications' ResNet v1 bottleneck: 1x1 (strided), 3x3, 1x1 to 4 * width."""
    shortcut = x
    if conv_shortcut:
        shortcut = keras.layers.Conv2D(4 * width, 1, strides=stride, use_bias=use_bias, name=f"{name}_0_conv")(x)
        shortcut = batch_norm(name=f"{name}_0_bn")(shortcut)
    x = keras.layers.Conv2D(width, 1, strides=stride, use_bias=use_bias, name=f"{name}_1_conv")(x)
    x = batch_norm(name=f"{name}_1_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=use_bias, name=f"{name}_2_conv")(x)
    x = batch_norm(name=f"{name}_2_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = keras.layers.Conv2D(4 * width, 1, use_bias=use_bias, name=f"{name}_3_conv")(x)
    x = batch_norm(name=f"{name}_3_bn")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def _basic_block(x, width, stride, conv_shortcut, name, batch_norm, use_bias):
    """ResNet-18/34 basic block: 3x3 (strided), 3x3, both to `width`."""
    shortcut = x
    if conv_shortcut:
        shortcut = keras.layers.Conv2D(width, 1, strides=stride, use_bias=use_bias, name=f"{name}_0_conv")(x)
        shortcut = batch_norm(name=f"{name}_0_bn")(shortcut)
    x = keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=use_bias, name=f"{name}_1_conv")(x)
    x = batch_norm(name=f"{name}_1_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=use_bias, name=f"{name}_2_conv")(x)
    x = batch_norm(name=f"{name}_2_bn")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def _resnet50_from_file(path):
    """keras.applications.ResNet50(include_top=False) with the weights of the file at `path`."""
    where = f"{WEIGHTS_FLAG}={path!r}"
    if not path.endswith((".h5", ".hdf5")):
        raise ValueError(f"{where}: expected a Keras weights file ending in .h5 or .weights.h5")
    try:
        found = _weighted_layer_names(path)
    except OSError as error:  # h5py: not an HDF5 file, or unreadable
        raise ValueError(f"{where}: cannot be read as an HDF5 weights file: {error}") from error
    model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    # Keras loads .weights.h5 files by layer position, not name: compare the names first.
    _check_layer_names(found=found, expected=_weighted_layers(model), where=where,
                       expected_what="keras.applications ResNet50(include_top=False)")
    try:
        model.load_weights(path)
    except ValueError as error:
        raise ValueError(f"{where}: does not load into keras.applications ResNet50(include_top=False): {error}") from error
    return model


def _weighted_layer_names(path):
    """Names of the layers with weights in a Keras weights file (legacy .h5 or Keras 3 .weights.h5)."""
    with h5py.File(path, "r") as f:
        if "layers" in f and "layer_names" not in f.attrs:
            # Keras 3: layers/<class-based key>/vars/{0, 1, ...}, the layer name an attribute of vars.
            return [_text(group["vars"].attrs.get("name", key)) for key, group in f["layers"].items()
                    if "vars" in group and len(group["vars"])]
        # Legacy: attributes layer_names and, per layer group, weight_names; full-model
        # files keep them under model_weights.
        if "layer_names" not in f.attrs and "model_weights" in f:
            f = f["model_weights"]
        return [name for name in _legacy_attribute(f, "layer_names") if _legacy_attribute(f[name], "weight_names")]


def _legacy_attribute(group, name):
    """A legacy HDF5 string-list attribute; long ones are split into name0, name1, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [_text(value) for value in values]


def _text(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _weighted_layers(*models):
    """{name: layer} of the layers with weights."""
    return {layer.name: layer for model in models for layer in model.layers if layer.weights}


def _check_layer_names(found, expected, where, expected_what):
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: its layers with weights do not match {expected_what}'s "
                         f"({len(expected)} layers): missing {_name_list(missing)}; "
                         f"unexpected {_name_list(unexpected)}")


def _name_list(names):
    if not names:
        return "none"
    shown = ", ".join(names[:_MAX_NAMES_SHOWN])
    more = len(names) - _MAX_NAMES_SHOWN
    return f"{len(names)} ({shown}{f' and {more} more' if more > 0 else ''})"


def _copy_weights_by_name(source, targets, where):
    """Copies every weighted layer of the `targets` models from the `source` layer of the same name."""
    source_layers = _weighted_layers(source)
    target_layers = _weighted_layers(*targets)
    _check_layer_names(found=source_layers, expected=target_layers, where=where,
                       expected_what=" + ".join(model.name for model in targets))
    for name, layer in target_layers.items():
        values = source_layers[name].get_weights()
        shapes = [tuple(v.shape) for v in values]
        expected = [tuple(w.shape) for w in layer.weights]
        if shapes != expected:
            raise ValueError(f"{where}: layer {name!r} has weights of shapes {shapes}; the network needs {expected}")
        layer.set_weights(values)
