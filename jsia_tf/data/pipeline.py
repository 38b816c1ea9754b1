"""tf.data input pipeline: decoding, the shared preprocessing, augmentation and the
cross-modal identity sampler (paper Sec. 4.2).

Paper: training images are resized to 256x128 and flipped horizontally; a batch holds
16 persons x (4 RGB + 4 IR) images = 128. The standard re-ID augmentations of the AGW
cross-modal baseline (zero-pad 10 + random crop, random erasing, channel augmentation)
are each behind a :class:`jsia_tf.config.AugmentConfig` field.

Every image, in training, evaluation and the exported model, goes through
:func:`preprocess` (gray -> 3 channels, bilinear resize, caffe normalisation, which is
what the keras.applications ResNet-50 ImageNet weights expect). Training augmentation
runs after it, on normalised images.

Randomness: the identity sampler is a NumPy generator seeded by the pipeline seed; each
image's augmentation uses stateless ops seeded by (pipeline seed, position of its pair
in the stream). The same seed gives the same stream of batches, however it is split
over replicas and workers (:func:`train_dataset`).
"""

import concurrent.futures
import dataclasses
import json
import os
import re

from absl import logging
import numpy as np
import tensorflow as tf

from jsia_tf.config import AugmentConfig
from jsia_tf.data import records, regdb, sysu

# keras.applications.resnet50.preprocess_input ("caffe" mode): RGB -> BGR, subtract
# the ImageNet mean pixel (BGR order), no scaling.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# Random erasing, Zhong et al. 2017 ("Random Erasing Data Augmentation"): erased area
# fraction of the image, aspect ratio (height / width) drawn uniformly, attempts to draw
# a rectangle that fits inside the image before giving up.
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)
ERASE_ATTEMPTS = 100

# Channel augmentation (AGW / CAJ, Ye et al. ICCV 2021): an RGB image becomes a gray one
# made of its R, G or B channel or of its luminance, each with probability 1/4.
# Rows are weights over BGR pixels.
GRAY_CHOICES_BGR = (
    (0.0, 0.0, 1.0),  # R
    (0.0, 1.0, 0.0),  # G
    (1.0, 0.0, 0.0),  # B
    (0.1140, 0.5870, 0.2989),  # luminance, 0.2989 R + 0.5870 G + 0.1140 B
)


def normalize(images):
    """float32 RGB pixels [..., 3] in [0, 255] -> caffe-normalised BGR [..., 3]."""
    return images[..., ::-1] - tf.constant(CAFFE_MEAN_BGR)


def denormalize(images):
    """Inverse of :func:`normalize`: normalised BGR [..., 3] -> uint8 RGB (for summaries)."""
    pixels = (images + tf.constant(CAFFE_MEAN_BGR))[..., ::-1]
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)


def preprocess(images, height, width):
    """The one preprocessing of training, evaluation and export.

    Args:
      images: uint8 or float pixels in [0, 255], [N, H, W, C] or [H, W, C], C in {1, 3}
        (RGB, or gray such as thermal images).
      height, width: output size (paper: 256x128).
    Returns:
      float32 [..., height, width, 3], caffe-normalised BGR.
    """
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8 and not images.dtype.is_floating:
        raise TypeError(f"preprocess expects uint8 or float pixels, got {images.dtype.name}")
    channels = images.shape[-1]
    if channels == 1:
        images = tf.repeat(images, 3, axis=-1)  # gray -> 3 identical channels
    elif channels != 3:
        raise ValueError(f"preprocess expects 1 or 3 channels (a static last dimension), got shape {images.shape}")
    return normalize(resize(images, height, width))


def resize(images, height, width):
    """float32 pixels [..., height, width, C]: the resize of :func:`preprocess`.

    Antialiased bilinear, like PIL's bilinear resize (torchvision) when shrinking. Images
    whose static size is already ``height`` x ``width`` are only cast: resizing them is
    the identity, and the graph stays free of ``ScaleAndTranslate``, which LiteRT lacks
    (the ``jsia_tf.litert`` models take images of the training size).
    """
    images = tf.cast(images, tf.float32)
    if tuple(images.shape[-3:-1]) == (height, width):
        return images
    return tf.image.resize(images, (height, width), method="bilinear", antialias=True)


def decode_image(path):
    """uint8 [H, W, 3] pixels of a BMP/JPEG/PNG file; gray (thermal) files get 3 channels."""
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def load_image(path, height, width):
    """Decoded and preprocessed image: float32 [height, width, 3]."""
    return preprocess(decode_image(path), height, width)


# Beside the dataset (in its folder): {file relative to it: [size, mtime_ns]} of the
# images that decoded, so that a later run decodes only new or changed files.
VERIFIED_IMAGES = ".jsia_verified_images.json"
_SHOWN_BAD_FILES = 10


def op_error_line(message):
    """What a TensorFlow error ``message`` says failed, in one line: its last unindented
    line (graph errors put the check's message there), without node and op names."""
    lines = [line for line in message.splitlines() if line.strip() and not line[0].isspace()]
    line = lines[-1] if lines else message.strip()
    return re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:[^\]]*\]", "", line).strip()


def _decode_problem(path):
    """None if ``path`` decodes as training decodes it, else why not (one line)."""
    try:
        decode_image(path)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        return op_error_line(error.message)
    return None


def _signature(path):
    """[size, mtime_ns] of ``path``, None if it is missing (then decoding it names it)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def check_images(image_lists, root):
    """Decodes every file of ``image_lists`` once, in parallel, as training would.

    Bad files are found before training starts rather than at the step (or the final
    evaluation) that first reads them, where TensorFlow's error names no file. The
    verdict is cached in ``root/VERIFIED_IMAGES`` (not written if the folder is
    read-only: then every run checks again).
    Raises:
      records.DatasetError: naming every file that does not decode, with why.
    """
    cache_path = os.path.join(root, VERIFIED_IMAGES)
    try:
        with open(cache_path) as f:
            verified = json.load(f)
    except (OSError, ValueError):
        verified = {}
    paths = sorted({path for images in image_lists for path in images.paths})
    keys = {path: os.path.relpath(path, root) for path in paths}
    todo = [path for path in paths if verified.get(keys[path]) != _signature(path)]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # decoding releases the GIL
        problems = dict(zip(todo, pool.map(_decode_problem, todo)))
    bad = [f"{path}: cannot be decoded as a BMP/JPEG/PNG image ({problem})"
           for path, problem in problems.items() if problem]
    if bad:
        more = f"; and {len(bad) - _SHOWN_BAD_FILES} more" if len(bad) > _SHOWN_BAD_FILES else ""
        raise records.DatasetError(f"{len(bad)} image file(s) do not decode: {'; '.join(bad[:_SHOWN_BAD_FILES])}{more}")
    if todo:
        verified.update({keys[path]: _signature(path) for path in todo})
        partial = f"{cache_path}.{os.getpid()}"  # renamed into place: a reader never sees half of it
        try:
            with open(partial, "w") as f:
                json.dump(verified, f)
            os.replace(partial, cache_path)
        except OSError as error:
            logging.warning("Cannot record the checked images in %s (%s): the next run checks them again",
                            cache_path, error.strerror)


def load_dataset(name, root, trial=1, verify=False):
    """Reads dataset ``name`` ("regdb" or "sysu") at ``root``.

    Args:
      trial: the RegDB train/test split, 1..10. SYSU-MM01 has one fixed split (its 10
        trials are gallery draws made by the evaluation), so it does not use it.
      verify: decode every training and test image (:func:`check_images`) and raise
        DatasetError naming every bad file.
    """
    if name == "regdb":
        dataset = regdb.load_regdb(root, trial)
    elif name == "sysu":
        dataset = sysu.load_sysu(root)
    else:
        raise ValueError(f"unknown dataset {name!r}; expected 'regdb' or 'sysu'")
    if verify:
        check_images((dataset.train_rgb, dataset.train_ir, dataset.test), str(root))
    return dataset


def random_erasing(image, probability, seed):
    """Random erasing (Zhong et al. 2017) of one normalised image [H, W, C].

    With ``probability``, up to ERASE_ATTEMPTS rectangles of random area and aspect are
    drawn; the first one that fits is set to 0 (the mean pixel); if none fits the image
    is kept, as in the reference implementation.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    area_seed, aspect_seed, top_seed, left_seed, apply_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5))
    area = tf.cast(height * width, tf.float32) * tf.random.stateless_uniform(
        [ERASE_ATTEMPTS], area_seed, *ERASE_AREA)
    aspect = tf.random.stateless_uniform([ERASE_ATTEMPTS], aspect_seed, *ERASE_ASPECT)
    heights = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)  # [ERASE_ATTEMPTS]
    widths = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (heights < height) & (widths < width)
    first = tf.argmax(tf.cast(fits, tf.int32))  # 0 when none fits; then nothing is erased
    erase_h, erase_w = tf.minimum(heights[first], height), tf.minimum(widths[first], width)
    top = tf.random.stateless_uniform([], top_seed, 0, height - erase_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], left_seed, 0, width - erase_w + 1, dtype=tf.int32)
    rows, cols = tf.range(height), tf.range(width)
    inside = (((rows >= top) & (rows < top + erase_h))[:, None]
              & ((cols >= left) & (cols < left + erase_w))[None, :])  # [H, W]
    erase = tf.reduce_any(fits) & (tf.random.stateless_uniform([], apply_seed) < probability)
    return tf.where(erase & inside[:, :, None], tf.zeros_like(image), image)


def channel_augment(image, probability, seed):
    """AGW channel augmentation of one normalised RGB image [H, W, 3].

    With ``probability`` the image becomes gray: one of GRAY_CHOICES_BGR is applied to
    the pixel values (not to normalised values as AGW does, so the result is a real
    gray image) and replicated to 3 channels.
    """
    choice_seed, apply_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    mean = tf.constant(CAFFE_MEAN_BGR)
    weights = tf.gather(tf.constant(GRAY_CHOICES_BGR),
                        tf.random.stateless_uniform([], choice_seed, 0, len(GRAY_CHOICES_BGR), dtype=tf.int32))
    gray = tf.reduce_sum((image + mean) * weights, axis=-1, keepdims=True)  # [H, W, 1] pixels
    gray = tf.repeat(gray, 3, axis=-1) - mean
    return tf.where(tf.random.stateless_uniform([], apply_seed) < probability, gray, image)


# Range of the gamma of intensity_augment, log-uniform.
INTENSITY_GAMMA = (0.5, 2.0)


def intensity_augment(image, probability, seed):
    """A random intensity remapping of one normalised image [H, W, 3] (either modality).

    With ``probability``: the pixels are inverted (255 - p) with probability 1/2, then
    raised to a gamma drawn log-uniformly from :data:`INTENSITY_GAMMA` (p = 255 (p /
    255)^gamma). IR brightness follows temperature or near-infrared reflectance, not
    visible brightness: dark clothes may be bright in IR and the other way round. An
    identity cue that survives any monotone remapping, or its inverse, is one that both
    modalities show (shape, layout, relative contrast), which is what cross-modality
    matching can use.
    """
    apply_seed, invert_seed, gamma_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    mean = tf.constant(CAFFE_MEAN_BGR)
    pixels = tf.clip_by_value(image + mean, 0.0, 255.0) / 255.0  # [H, W, 3] in [0, 1]
    pixels = tf.where(tf.random.stateless_uniform([], invert_seed) < 0.5, 1.0 - pixels, pixels)
    low, high = np.log(INTENSITY_GAMMA[0]), np.log(INTENSITY_GAMMA[1])
    gamma = tf.exp(tf.random.stateless_uniform([], gamma_seed, low, high))
    remapped = 255.0 * tf.pow(pixels, gamma) - mean
    return tf.where(tf.random.stateless_uniform([], apply_seed) < probability, remapped, image)


def augment_image(image, config, seed, rgb):
    """Training augmentation of one normalised image [H, W, 3] (static shape, kept).

    Args:
      config: AugmentConfig.
      seed: int [2], stateless seed of this image.
      rgb: whether the image is RGB (channel augmentation applies to RGB only).
    """
    flip_seed, crop_seed, erase_seed, channel_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    if config.flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if config.pad:
        # Pad with black pixels (torchvision Pad(10) in AGW): in
        # normalised space black is -mean.
        mean = tf.constant(CAFFE_MEAN_BGR)
        padding = [[config.pad, config.pad], [config.pad, config.pad], [0, 0]]
        padded = tf.pad(image + mean, padding) - mean  # [H + 2 pad, W + 2 pad, 3]
        image = tf.image.stateless_random_crop(padded, image.shape, crop_seed)
    if config.random_erasing:
        image = random_erasing(image, config.random_erasing, erase_seed)
    if rgb and config.channel_aug:
        image = channel_augment(image, config.channel_aug, channel_seed)
    if config.intensity_aug:  # its own stream, so that switching it on leaves the other draws as they are
        image = intensity_augment(image, config.intensity_aug, tf.random.experimental.stateless_fold_in(seed, 4))
    return image


class IdentitySampler:
    """Cross-modal identity sampler: an endless iterable of index batches.

    Each epoch is a random permutation of the classes, cut into batches of ``num_ids``
    distinct classes (a last incomplete batch is dropped). For each class, K =
    ``num_instances`` RGB and K IR images are drawn, without replacement when the class
    has at least K images of that modality, with replacement otherwise. Every iteration
    restarts from ``seed``.

    Args:
      rgb_labels, ir_labels: int [N_rgb], [N_ir] class labels in [0, num_classes).
    Yields:
      (rgb_index, ir_index, labels): int64 [num_ids * K] each, id-major
      ([c0 x K, c1 x K, ...]), so splitting the batch dimension into parts that are
      multiples of K keeps RGB and IR aligned.
    """

    def __init__(self, rgb_labels, ir_labels, num_classes, num_ids, num_instances, seed):
        if num_ids < 1 or num_instances < 1:
            raise ValueError(f"num_ids and num_instances must be >= 1, got {num_ids} and {num_instances}")
        if num_classes < num_ids:
            raise ValueError(f"a batch of {num_ids} distinct identities needs at least {num_ids} classes, "
                             f"got {num_classes}")
        self.pools = {}
        for modality, labels in (("RGB", rgb_labels), ("IR", ir_labels)):
            self.pools[modality] = [np.flatnonzero(labels == c) for c in range(num_classes)]
            empty = [c for c, pool in enumerate(self.pools[modality]) if not len(pool)]
            if empty:
                raise ValueError(f"training classes {empty} have no {modality} images")
        self.num_classes = num_classes
        self.num_ids = num_ids
        self.num_instances = num_instances
        self.seed = seed

    def __iter__(self):
        rng = np.random.default_rng(self.seed)

        def draw(pool):
            return rng.choice(pool, size=self.num_instances, replace=len(pool) < self.num_instances)

        while True:
            order = rng.permutation(self.num_classes)
            for start in range(0, self.num_classes - self.num_ids + 1, self.num_ids):
                classes = order[start:start + self.num_ids]
                rgb_index = np.concatenate([draw(self.pools["RGB"][c]) for c in classes])
                ir_index = np.concatenate([draw(self.pools["IR"][c]) for c in classes])
                yield rgb_index, ir_index, np.repeat(classes, self.num_instances)


def replica_slices(sampler, num_replicas, replica_ids, start_batch=0):
    """Endless (rgb_index, ir_index, labels, positions) slices of the sampler's global batches.

    Every global batch (P*K pairs, id-major) is cut into ``num_replicas`` contiguous
    slices of P*K/R pairs; for each batch from ``start_batch`` on, the slices of
    ``replica_ids`` are yielded in that order. ``positions`` numbers each pair in the
    global stream (batch number * P*K + offset), so an image's augmentation does not
    depend on how the batch is split.
    """
    batch_size = sampler.num_ids * sampler.num_instances
    size = batch_size // num_replicas
    for number, (rgb_index, ir_index, labels) in enumerate(sampler):
        if number < start_batch:
            continue  # replaying indices only: resuming reads no images
        for replica in replica_ids:
            part = slice(replica * size, (replica + 1) * size)
            yield (rgb_index[part], ir_index[part], labels[part],
                   number * batch_size + np.arange(part.start, part.stop, dtype=np.int64))


def train_dataset(dataset, num_ids, num_instances, height, width, seed, augment=AugmentConfig(), start_batch=0,
                  num_replicas=1, replica_ids=None):
    """Infinite stream of cross-modal training batches, whole or one replica's share.

    Paper: P = ``num_ids`` = 16, K = ``num_instances`` = 4 at 256x128 for re-ID; the
    reference code draws the GAN's batches the same way with P = K = 3 (call this again
    with those and another seed).

    Sharding for tf.distribute: every input pipeline (one per worker) runs the same
    seeded identity sampler, which only draws indices, and keeps the slices of its own
    replicas: replica r gets identities r*P/R .. (r+1)*P/R - 1 of each global batch,
    RGB and IR in the same order. It reads and augments only those images, with the
    seeds the unsplit stream uses, so the replicas' batches put together are exactly
    the one-device batch whatever R is.

    Args:
      dataset: CrossModalDataset.
      num_ids, num_instances: P identities per (global) batch, K images per identity
        and modality.
      height, width: image size.
      seed: seeds the identity sampler and every image's augmentation.
      augment: AugmentConfig.
      start_batch: global batches to skip, to resume a run: the stream then continues
        exactly as an uninterrupted one (only the sampler's indices are replayed).
      num_replicas: R, replicas the global batch is split over; must divide P.
      replica_ids: the replicas whose batches this stream yields, in turn for each
        global batch (default: all R; with R > 1 each element is then one replica's).
    Returns:
      tf.data.Dataset of dicts: "rgb", "ir": float32 [P*K/R, height, width, 3]
      normalised; "rgb_labels", "ir_labels": int32 [P*K/R] contiguous classes, equal
      element-wise, id-major.
    Raises:
      ValueError: P is not a multiple of R, or a replica id is not in [0, R).
    """
    if num_replicas < 1 or num_ids % num_replicas:
        raise ValueError(f"num_ids={num_ids} identities per batch cannot be split into whole identities over "
                         f"{num_replicas} replicas: expected a multiple of {num_replicas}")
    replica_ids = tuple(range(num_replicas)) if replica_ids is None else tuple(replica_ids)
    if not replica_ids or not all(0 <= r < num_replicas for r in replica_ids):
        raise ValueError(f"replica_ids={replica_ids}: expected ids in [0, {num_replicas})")
    sampler = IdentitySampler(dataset.train_labels(dataset.train_rgb), dataset.train_labels(dataset.train_ir),
                              dataset.num_classes, num_ids, num_instances, seed)
    size = num_ids * num_instances // num_replicas
    index_spec = tf.TensorSpec([size], tf.int64)
    indices = tf.data.Dataset.from_generator(
        lambda: replica_slices(sampler, num_replicas, replica_ids, start_batch),
        output_signature=(index_spec,) * 4)
    rgb_paths = tf.constant(dataset.train_rgb.paths)
    ir_paths = tf.constant(dataset.train_ir.paths)

    def load(rgb_index, ir_index, label, position):
        rgb_seed, ir_seed = tf.unstack(tf.random.experimental.stateless_split(
            tf.stack([tf.constant(seed, tf.int64), position]), 2))
        rgb = augment_image(load_image(tf.gather(rgb_paths, rgb_index), height, width), augment, rgb_seed, rgb=True)
        ir = augment_image(load_image(tf.gather(ir_paths, ir_index), height, width), augment, ir_seed, rgb=False)
        label = tf.cast(label, tf.int32)
        return {"rgb": rgb, "ir": ir, "rgb_labels": label, "ir_labels": label}

    # One element per (RGB, IR) pair; its position in the global stream seeds its augmentation.
    return (indices.unbatch()
            .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def training_streams(dataset, data_cfg, start_batch=0, num_replicas=1, replica_ids=None):
    """The two seeded training streams, zipped: (re-ID batch, generation batch).

    P x K re-ID batches (``data_cfg.seed``) and module G's smaller batches (seed + 1),
    global sizes; ``start_batch``, ``num_replicas`` and ``replica_ids`` as
    :func:`train_dataset`'s, for both streams.
    """
    # Module G learns each modality's appearance (Sec. 3.1: the style code carries the
    # RGB colours) from the generation batch: it gets the geometric augmentation only. A
    # channel-augmented RGB image is one channel repeated, and G's RGB decoder then learned
    # to draw gray persons (measured on the true pairs at 128 x 64 with --channel_aug=1).
    augments = [data_cfg, dataclasses.replace(data_cfg, channel_aug=0.0, intensity_aug=0.0)]
    streams = [train_dataset(dataset, num_ids, num_instances, data_cfg.height, data_cfg.width,
                             seed=data_cfg.seed + offset, augment=augments[offset], start_batch=start_batch,
                             num_replicas=num_replicas, replica_ids=replica_ids)
               for offset, (num_ids, num_instances) in enumerate(
                   [(data_cfg.num_ids, data_cfg.num_instances), (data_cfg.gan_num_ids, data_cfg.gan_num_instances)])]
    return tf.data.Dataset.zip(tuple(streams))


def eval_dataset(image_list, height, width, batch_size):
    """Preprocessed float32 [<=batch_size, height, width, 3] batches of ``image_list`` in order."""
    return (tf.data.Dataset.from_tensor_slices(image_list.paths)
            .map(lambda path: load_image(path, height, width), num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic=True)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))
