"""The re-ID backbone: keras.applications' ResNet-50 by name, last stride 1, the E^sl / E^il split.

The ResNet-50 reference is keras.applications.ResNet50(include_top=False) with random weights
(biases and batch-norm statistics drawn too, so that copying them matters), built once per
module; the inputs are 64x32, the smallest keras.applications accepts.
"""

import contextlib
import shutil

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_script_json
from jsia_tf.models import backbone

HEIGHT, WIDTH = 64, 32
TINY_WIDTHS = (8, 16, 32, 64)
RESNET50_WEIGHTED_LAYERS = 106
# conv5's first block: its first 1x1 conv and its shortcut carry the stage's stride.
LAST_STRIDE_LAYERS = ("conv5_block1_1_conv", "conv5_block1_0_conv")


@pytest.fixture(scope="module")
def reference():
    """keras.applications' ResNet-50 trunk with random kernels, biases and batch-norm weights."""
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for variable in (layer.gamma, layer.moving_variance):
                variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
            for variable in (layer.beta, layer.moving_mean):
                variable.assign(rng.normal(0.0, 0.1, variable.shape).astype("float32"))
        elif isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(rng.normal(0.0, 0.1, layer.bias.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def weights_file(reference, tmp_path_factory):
    """The reference's weights as a Keras 3 .weights.h5 file."""
    path = tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5"
    reference.save_weights(path)
    return str(path)


@pytest.fixture(scope="module")
def resnet50(weights_file):
    """The paper's backbone (last stride 1) with the reference's weights, loaded from the file."""
    return backbone.build_backbone("resnet50", weights=weights_file, last_stride=1)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(-1.0, 1.0, (2, HEIGHT, WIDTH, 3)).astype("float32")


def weighted_layers(*models):
    return {layer.name: layer for model in models for layer in model.layers if layer.weights}


def encoders(net):
    return net.set_level_encoder, net.instance_level_encoder


def assert_same_weights(net, reference):
    """Every weighted layer of the backbone holds the reference layer's weights of the same name."""
    layers, expected = weighted_layers(*encoders(net)), weighted_layers(reference)
    assert sorted(layers) == sorted(expected)
    for name, layer in layers.items():
        for value, expected_value in zip(layer.get_weights(), expected[name].get_weights(), strict=True):
            np.testing.assert_array_equal(value, expected_value, err_msg=name)


def write_legacy_h5(path, layers):
    """A weights-only legacy Keras HDF5 file, the layout of keras.applications' ImageNet downloads.

    `layers`: {layer name: [(weight name, array)]}, layers without weights included.
    """
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name in layers])
        f.attrs["backend"] = b"tensorflow"
        for name, weights in layers.items():
            group = f.create_group(name)
            weight_names = [f"{name}/{weight_name}:0" for weight_name, _ in weights]
            group.attrs["weight_names"] = np.array([n.encode() for n in weight_names], dtype="S")
            for weight_name, (_, value) in zip(weight_names, weights):
                group[weight_name] = value
    return str(path)


def legacy_layers(model):
    return {layer.name: [(w.name, w.numpy()) for w in layer.weights] for layer in model.layers}


def with_last_stride_1(reference):
    """keras.applications' ResNet-50 with stride 1 in LAST_STRIDE_LAYERS, same weights."""
    def clone(layer):
        config = layer.get_config()
        if layer.name in LAST_STRIDE_LAYERS:
            config["strides"] = (1, 1)
        return layer.__class__.from_config(config)

    model = keras.models.clone_model(reference, clone_function=clone)
    model.set_weights(reference.get_weights())
    return model


@contextlib.contextmanager
def dtype_policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def test_last_stride_2_equals_keras_applications(reference, weights_file, images):
    net = backbone.build_backbone("resnet50", weights=weights_file, last_stride=2)
    assert len(weighted_layers(*encoders(net))) == RESNET50_WEIGHTED_LAYERS
    assert_same_weights(net, reference)

    features = net.set_level_encoder(images, training=False)
    assert features.shape == (2, HEIGHT // 4, WIDTH // 4, net.out_channels)
    stem_and_layer1 = keras.Model(reference.input, reference.get_layer("conv2_block3_out").output)
    np.testing.assert_allclose(features, stem_and_layer1(images), rtol=1e-5, atol=1e-5)

    output = net.instance_level_encoder(features, training=False)
    assert output.shape == (2, HEIGHT // 32, WIDTH // 32, net.feature_dim)
    np.testing.assert_allclose(output, reference(images, training=False), rtol=1e-5, atol=1e-5)


def test_last_stride_1_doubles_the_output_and_splits_exactly(reference, resnet50, images):
    assert (resnet50.out_channels, resnet50.feature_dim) == (256, 2048)
    output = resnet50(images, training=False)
    assert output.shape == (2, HEIGHT // 16, WIDTH // 16, 2048)
    assert output.shape[1:3] == tuple(2 * s for s in reference(images).shape[1:3])
    np.testing.assert_allclose(output, with_last_stride_1(reference)(images, training=False), rtol=1e-5, atol=1e-5)

    # The two halves composed into one model compute the same.
    inputs = keras.Input((None, None, 3))
    combined = keras.Model(inputs, resnet50.instance_level_encoder(resnet50.set_level_encoder(inputs)))
    np.testing.assert_allclose(combined(images, training=False), output, rtol=1e-6, atol=1e-6)


def test_the_encoders_share_nothing(resnet50):
    sl_layers, il_layers = (weighted_layers(model) for model in encoders(resnet50))
    assert not set(sl_layers) & set(il_layers)
    assert max(name for name in sl_layers) < "conv3"
    assert min(name for name in il_layers) >= "conv3"
    sl_vars, il_vars = ({id(v) for v in model.weights} for model in encoders(resnet50))
    assert not sl_vars & il_vars


def test_legacy_h5_file_and_synchronized_batch_norm(reference, tmp_path):
    path = write_legacy_h5(tmp_path / "resnet50_notop.h5", legacy_layers(reference))
    net = backbone.build_backbone("resnet50", weights=path, synchronized_bn=True)
    assert_same_weights(net, reference)
    batch_norms = [layer for model in encoders(net) for layer in model.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batch_norms) == 53
    assert all(layer.synchronized and layer.epsilon == backbone.BN_EPSILON for layer in batch_norms)


def test_imagenet_weights_come_from_keras_applications(monkeypatch, reference):
    calls = []

    def fake_resnet50(**kwargs):  # the download is not reachable from the tests
        calls.append(kwargs)
        return reference

    monkeypatch.setattr(keras.applications, "ResNet50", fake_resnet50)
    net = backbone.build_backbone("resnet50", weights="imagenet")
    assert calls == [dict(include_top=False, weights="imagenet", input_shape=(None, None, 3))]
    assert_same_weights(net, reference)


def delete_weights_h5_layer(path, layer_name):
    with h5py.File(path, "r+") as f:
        (key,) = [key for key, group in f["layers"].items() if group["vars"].attrs.get("name") == layer_name]
        del f["layers"][key]


@pytest.mark.parametrize("file_format", ["weights.h5", "legacy h5"])
def test_a_file_missing_a_layer_is_refused_by_name(reference, weights_file, tmp_path, file_format):
    if file_format == "weights.h5":
        path = tmp_path / "partial.weights.h5"
        shutil.copy(weights_file, path)
        delete_weights_h5_layer(path, "conv3_block2_2_conv")
    else:
        layers = legacy_layers(reference)
        del layers["conv3_block2_2_conv"]
        path = write_legacy_h5(tmp_path / "partial.h5", layers)
    with pytest.raises(ValueError, match=r"--backbone_weights=.*partial.*missing 1 \(conv3_block2_2_conv\); "
                                         r"unexpected none"):
        backbone.build_backbone("resnet50", weights=str(path))


def test_a_file_with_an_extra_layer_is_refused_by_name(reference, tmp_path):
    # As a file of ResNet50(include_top=True) would be.
    layers = legacy_layers(reference)
    layers["predictions"] = [("kernel", np.zeros((2048, 10), "float32")), ("bias", np.zeros(10, "float32"))]
    path = write_legacy_h5(tmp_path / "with_top.h5", layers)
    with pytest.raises(ValueError, match=r"with_top\.h5.*missing none; unexpected 1 \(predictions\)"):
        backbone.build_backbone("resnet50", weights=path)


def test_a_missing_weights_file_names_the_flag(tmp_path):
    path = str(tmp_path / "nowhere.h5")
    with pytest.raises(FileNotFoundError, match=r"--backbone_weights='.*nowhere\.h5'"):
        backbone.build_backbone("resnet50", weights=path)


@pytest.mark.parametrize("file_name, content, message", [
    ("resnet50.ckpt", b"", r"--backbone_weights='.*resnet50\.ckpt': expected .*\.h5 or \.weights\.h5"),
    ("not_hdf5.h5", b"plain text", r"--backbone_weights='.*not_hdf5\.h5': cannot be read as an HDF5"),
])
def test_a_file_that_is_not_keras_weights_names_the_flag(tmp_path, file_name, content, message):
    path = tmp_path / file_name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        backbone.build_backbone("resnet50", weights=str(path))


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="resnet101"), "name='resnet101'"),
    (dict(last_stride=3), "last_stride=3"),
    (dict(widths=(64, 128, 256)), "widths="),
    (dict(name="resnet18", weights="imagenet"), "resnet18 has no pretrained weights"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        backbone.build_backbone(**kwargs)


def count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def test_resnet50_parameter_counts(resnet50):
    sl, il = encoders(resnet50)
    # PyTorch (reference_facts.md): stem + layer1 225,344, layer2-4 23,282,688 trainable.
    # keras.applications' convs add biases: 1,472 in E^sl, 25,088 in E^il.
    assert count(sl.trainable_weights) == 225_344 + 1_472 == 226_816
    assert count(il.trainable_weights) == 23_282_688 + 25_088 == 23_307_776
    # Batch-norm moving means and variances (PyTorch buffers, not parameters).
    assert count(sl.non_trainable_weights) == 2_944
    assert count(il.non_trainable_weights) == 50_176


def test_resnet18_parameter_counts():
    net = backbone.build_backbone("resnet18")
    sl, il = encoders(net)
    # torchvision's resnet18 without its fc layer: 11,689,512 - 513,000.
    assert count(sl.trainable_weights) + count(il.trainable_weights) == 11_176_512
    assert (count(sl.trainable_weights), count(il.trainable_weights)) == (157_504, 11_019_008)
    assert (count(sl.non_trainable_weights), count(il.non_trainable_weights)) == (640, 8_960)
    tiny = backbone.build_backbone("resnet18", widths=TINY_WIDTHS)
    assert [count(model.trainable_weights) for model in encoders(tiny)] == [3_560, 173_152]


@pytest.mark.parametrize("last_stride", [1, 2])
def test_resnet18_shapes(images, last_stride):
    net = backbone.build_backbone("resnet18", widths=TINY_WIDTHS, last_stride=last_stride)
    assert (net.out_channels, net.feature_dim) == (8, 64)
    features = net.set_level_encoder(images)
    assert features.shape == (2, HEIGHT // 4, WIDTH // 4, 8)
    stride = 16 * last_stride
    assert net.instance_level_encoder(features).shape == (2, HEIGHT // stride, WIDTH // stride, 64)


def assert_gradients_reach_everything(net, images, training):
    variables = [v for model in encoders(net) for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(tf.cast(net(images, training=training), tf.float32)))
    gradients = tape.gradient(loss, variables)
    assert not [v.path for v, g in zip(variables, gradients) if g is None]
    assert all(bool(tf.reduce_all(tf.math.is_finite(tf.cast(g, tf.float32)))) for g in gradients)
    assert not [v.path for v, g in zip(variables, gradients) if not np.any(g.numpy())]
    return variables


def test_gradients_reach_both_resnet50_encoders(resnet50, images):
    # Inference mode: batch norm uses (and does not update) the moving statistics, so
    # the shared fixture is left as it was, and the conv biases get gradients too.
    variables = assert_gradients_reach_everything(resnet50, images, training=False)
    assert len(variables) == 4 * RESNET50_WEIGHTED_LAYERS // 2  # 53 convs: kernel, bias; 53 BNs: gamma, beta


def test_gradients_reach_both_resnet18_encoders_in_training_mode(images):
    net = backbone.build_backbone("resnet18", widths=TINY_WIDTHS)
    assert_gradients_reach_everything(net, images, training=True)


def test_mixed_bfloat16(images):
    with dtype_policy("mixed_bfloat16"):
        net = backbone.build_backbone("resnet18", widths=TINY_WIDTHS)
    assert net(images).dtype == tf.bfloat16
    assert all(v.dtype == "float32" for model in encoders(net) for v in model.weights)
    assert_gradients_reach_everything(net, images, training=True)

    reference_net = backbone.build_backbone("resnet18", widths=TINY_WIDTHS)
    for model, reference_model in zip(encoders(net), encoders(reference_net)):
        reference_model.set_weights(model.get_weights())
    expected = reference_net(images, training=False).numpy()
    output = tf.cast(net(images, training=False), tf.float32).numpy()
    assert np.linalg.norm(output - expected) < 0.05 * np.linalg.norm(expected)


# Module F's batch norm under MirroredStrategy over 2 logical CPUs: the same outputs,
# input gradients and moving statistics as Keras' synchronised batch norm and as one
# device's on the global batch, from one all-reduce per call (and one for its gradient)
# instead of Keras' 3 (+ 2). Each half of the batch has its own mean (0 and 6), so
# per-replica statistics would be far off.
_SYNC_BN_SCRIPT = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from jsia_tf.models.layers import BatchNormalization
rng = np.random.default_rng(0)
x = np.concatenate([rng.normal(0.0, 1.0, (4, 3, 2, 5)), rng.normal(6.0, 2.0, (4, 3, 2, 5))]).astype(np.float32)
all_reduces = [0]
original = tf.distribute.ReplicaContext.all_reduce
def counted(self, *args, **kwargs):
    all_reduces[0] += 1
    return original(self, *args, **kwargs)
tf.distribute.ReplicaContext.all_reduce = counted

def run(cls, strategy, synchronized):
    with strategy.scope():
        layer = cls(synchronized=synchronized, momentum=0.5)
        layer.build(x.shape)
    def replica(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            y = layer(images, training=True)
            loss = tf.reduce_sum(y * tf.sin(images))
        return y, tape.gradient(loss, images)
    step = tf.function(lambda v: strategy.run(replica, (v,)))
    n = strategy.num_replicas_in_sync
    inputs = x if n == 1 else strategy.experimental_distribute_values_from_function(
        lambda context: x[4 * context.replica_id_in_sync_group:][:4])
    all_reduces[0] = 0
    y, g = step(inputs)
    calls = all_reduces[0] // n  # traced once per replica
    local = lambda v: np.concatenate([t.numpy() for t in strategy.experimental_local_results(v)]).tolist()
    return {"y": local(y), "grad": local(g), "mean": layer.moving_mean.numpy().tolist(),
            "variance": layer.moving_variance.numpy().tolist(), "all_reduces": calls}

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
print(json.dumps({"ours": run(BatchNormalization, mirrored, True),
                  "keras": run(keras.layers.BatchNormalization, mirrored, True),
                  "one_device": run(keras.layers.BatchNormalization, tf.distribute.get_strategy(), False)}))
"""


def test_synchronized_batch_norm_takes_one_all_reduce_and_equals_keras_and_the_global_batch():
    out = run_script_json(_SYNC_BN_SCRIPT)
    ours, reference, one_device = out["ours"], out["keras"], out["one_device"]
    for other in (reference, one_device):
        for key in ("y", "grad", "mean", "variance"):
            np.testing.assert_allclose(ours[key], other[key], rtol=1e-4, atol=1e-5, err_msg=key)
    # momentum 0.5 from 0: half the global batch's mean, about 3 (replica 0's own is about 0)
    assert min(ours["mean"]) > 1.0
    assert ours["all_reduces"] == 2 and reference["all_reduces"] == 5  # forward + its gradient
