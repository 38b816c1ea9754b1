"""Evaluates test features under the SYSU-MM01 or RegDB protocol (paper Sec. 4.1).

  python -m jsia_tf.evaluate --features=F.npz --protocol=sysu \\
      [--sysu_mode=all|indoor] [--sysu_shots=1|10] [--sysu_rand_perm=rand_perm_cam.mat] \\
      [--trials=N] [--seed=S] --output_json=OUT.json
  python -m jsia_tf.evaluate --features=F.npz --protocol=regdb [--regdb_direction=v2t|t2v] \\
      --output_json=OUT.json
  Either with [--rerank [--rerank_k1=K1] [--rerank_k2=K2] [--rerank_lambda=LAMBDA]].
  Instead of --features: --saved_model=EXPORT/<version> or --tflite=EXPORT/embedder_int8.tflite,
  with --data_dir=DATASET [--trial=T], embeds the dataset's test images with an exported
  model (``jsia_tf.export``: a SavedModel, or a LiteRT model of any quantisation) first.

F.npz holds ``features`` [N, D] float, ``labels`` [N] int person ids, ``cams``
[N] int and, for SYSU-MM01, ``image_index`` [N] int (see
``jsia_tf.eval.protocols``). OUT.json is ``{"cmc": {"1": r1, "5": r5, "10": r10,
"20": r20}, "mAP": m, "mINP": i}``, fractions in [0, 1] averaged over trials,
ranked by cosine similarity. With --rerank it also holds ``"rerank": {"cmc": ...,
"mAP": ..., "mINP": ..., "parameters": {"k1": ..., "k2": ..., "lambda_value":
...}}``, the same metrics after k-reciprocal re-ranking (``jsia_tf.eval.rerank``);
the top-level numbers stay those without re-ranking.

Code that evaluates in-process (the training loop) calls
``jsia_tf.eval.protocols.evaluate_features``: importing this module would
define its flags.
"""

import json
import pathlib
import sys

import numpy as np
from absl import app, flags

from jsia_tf import config
from jsia_tf.eval import protocols
from jsia_tf.eval.metrics import format_summary

_FEATURES = flags.DEFINE_string("features", None, "Path of the .npz with features, labels, cams [, image_index].")
_PROTOCOL = flags.DEFINE_enum("protocol", None, list(protocols.PROTOCOLS), "Evaluation protocol.")
_SYSU_MODE = flags.DEFINE_enum("sysu_mode", config.SYSU_MODES[0], list(config.SYSU_MODES), "SYSU-MM01 search mode.")
_SYSU_SHOTS = flags.DEFINE_enum(
    "sysu_shots", str(config.SYSU_SHOTS[0]), [str(s) for s in config.SYSU_SHOTS],
    "SYSU-MM01 gallery images per (person, camera).")
_SYSU_RAND_PERM = flags.DEFINE_string(
    "sysu_rand_perm", None, "Official rand_perm_cam.mat; without it the galleries are drawn with --seed.")
_TRIALS = flags.DEFINE_integer(
    "trials", config.default(config.EvalConfig, "trials"), "SYSU-MM01 trials (random galleries).", lower_bound=1)
_REGDB_DIRECTION = flags.DEFINE_enum(
    "regdb_direction", config.REGDB_DIRECTIONS[0], list(config.REGDB_DIRECTIONS), "RegDB query -> gallery modality.")
_SEED = flags.DEFINE_integer("seed", config.default(config.DataConfig, "seed"),
                             "Seed of the SYSU-MM01 gallery draw without --sysu_rand_perm.")
_RERANK = flags.DEFINE_bool("rerank", False, "Also report the metrics after k-reciprocal re-ranking.")
_RERANK_K1 = flags.DEFINE_integer("rerank_k1", config.RERANK_K1, "Re-ranking k1 (k-reciprocal sets).", lower_bound=1)
_RERANK_K2 = flags.DEFINE_integer("rerank_k2", config.RERANK_K2, "Re-ranking k2 (local query expansion).",
                                  lower_bound=1)
_RERANK_LAMBDA = flags.DEFINE_float("rerank_lambda", config.RERANK_LAMBDA,
                                    "Re-ranking weight of the original distance.", lower_bound=0.0, upper_bound=1.0)
_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "Exported embedder version folder (instead of --features).")
_TFLITE = flags.DEFINE_string("tflite", None, "Exported LiteRT embedder, a .tflite file (instead of --features).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "With a model: the dataset root whose test set is embedded.")
_TRIAL = flags.DEFINE_integer("trial", config.default(config.DataConfig, "trial"),
                              "With a model and RegDB: the split whose test set is embedded.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", config.default(config.EvalConfig, "batch_size"),
                                   "With a model: images per embedding call.", lower_bound=1)
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Where to write the metrics as JSON.")

flags.mark_flags_as_required(["protocol", "output_json"])
flags.register_multi_flags_validator(
    ["features", "saved_model", "tflite", "data_dir"],
    lambda f: [f["features"], f["saved_model"], f["tflite"]].count(None) == 2 and (f["features"] is None) == (
        f["data_dir"] is not None),
    message="give either --features=F.npz or one model (--saved_model=DIR or --tflite=FILE) and --data_dir=DIR")

# Flags named after one protocol: setting them under the other is a mistake.
# (--trials and --seed only matter to SYSU-MM01; RegDB ignores them: one trial per call.)
_PROTOCOL_FLAGS = {
    "sysu": ("sysu_mode", "sysu_shots", "sysu_rand_perm"),
    "regdb": ("regdb_direction",),
}
_RERANK_FLAGS = ("rerank_k1", "rerank_k2", "rerank_lambda")


def load_features(path, protocol):
    """The arrays of a features .npz as a dict; ValueError names the file and key."""
    keys = ("features", "labels", "cams") + (("image_index",) if protocol == "sysu" else ())
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"cannot read {path} as an .npz file: {e}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array; expected an .npz with {list(keys)}")
    with npz:
        missing = [k for k in keys if k not in npz.files]
        if missing:
            raise ValueError(f"{path} lacks {missing}; it holds {sorted(npz.files)} "
                             f"and --protocol={protocol} needs {list(keys)}")
        return {k: npz[k] for k in keys}


def embed_test_set(model, data_dir, protocol, trial=1, batch_size=64):
    """The test set of the dataset at ``data_dir`` embedded by an exported model.

    ``model`` is a SavedModel version folder, or a LiteRT ``.tflite`` file (by its name).
    The files' bytes go through the SavedModel's ``embed_encoded`` signature, which
    decodes and preprocesses them in its graph as training did. A LiteRT model takes
    uint8 images of its input size: the files are decoded and resized as training does,
    rounded to uint8 (:meth:`jsia_tf.litert.LiteRTEmbedder.embed_files`), and the
    model's graph does the rest of the preprocessing.

    Returns:
      the arrays of a features .npz: features, labels, cams, image_index.
    Raises:
      ValueError: the model or the dataset folder is not what is expected.
    """
    import tensorflow as tf  # only this mode needs TensorFlow

    from jsia_tf import litert
    from jsia_tf.data import pipeline

    dataset = pipeline.load_dataset(protocol, data_dir, trial=trial)  # DatasetError is a ValueError
    if str(model).endswith(".tflite"):
        try:
            embedder = litert.LiteRTEmbedder(model)
        except (OSError, ValueError) as e:
            raise ValueError(f"--tflite={model}: not a LiteRT model of jsia_tf.export ({e})") from e
        features = embedder.embed_files(dataset.test.paths, batch_size)
    else:
        try:
            embed = tf.saved_model.load(model).signatures["embed_encoded"]
        except (OSError, KeyError, tf.errors.OpError) as e:
            raise ValueError(f"--saved_model={model}: not a jsia_tf export with an 'embed_encoded' signature "
                             f"({e})") from e
        files = tf.data.Dataset.from_tensor_slices(dataset.test.paths).map(tf.io.read_file).batch(batch_size)
        features = np.concatenate([embed(image_bytes=batch)["embedding"].numpy() for batch in files])
    test = dataset.test
    return {"features": features, "labels": test.pids, "cams": test.cams, "image_index": test.image_index}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    protocol = _PROTOCOL.value
    for other, names in _PROTOCOL_FLAGS.items():
        given = [f"--{n}" for n in names if flags.FLAGS[n].present]
        if other != protocol and given:
            raise app.UsageError(f"{', '.join(given)}: only used with --protocol={other}")
    given = [f"--{n}" for n in _RERANK_FLAGS if flags.FLAGS[n].present]
    if given and not _RERANK.value:
        raise app.UsageError(f"{', '.join(given)}: only used with --rerank")
    # Bad input data ends the run with its message, not a traceback.
    try:
        if _TFLITE.value and not _TFLITE.value.endswith(".tflite"):
            raise ValueError(f"--tflite={_TFLITE.value}: expected a .tflite file")
        if _SAVED_MODEL.value or _TFLITE.value:
            arrays = embed_test_set(_SAVED_MODEL.value or _TFLITE.value, _DATA_DIR.value, protocol, _TRIAL.value,
                                    _BATCH_SIZE.value)
        else:
            arrays = load_features(_FEATURES.value, protocol)
    except ValueError as e:
        sys.exit(f"error: {e}")
    settings = dict(protocol=protocol, sysu_mode=_SYSU_MODE.value, sysu_shots=int(_SYSU_SHOTS.value),
                    sysu_rand_perm=_SYSU_RAND_PERM.value, trials=_TRIALS.value,
                    regdb_direction=_REGDB_DIRECTION.value, seed=_SEED.value)
    parameters = dict(k1=_RERANK_K1.value, k2=_RERANK_K2.value, lambda_value=_RERANK_LAMBDA.value)
    try:
        metrics = protocols.evaluate_features(**arrays, **settings)
        reranked = protocols.evaluate_features(**arrays, **settings, rerank=parameters) if _RERANK.value else None
    except ValueError as e:
        source = next(f"--{n}={flags.FLAGS[n].value}" for n in ("features", "saved_model", "tflite")
                      if flags.FLAGS[n].value)
        sys.exit(f"error: {source}: {e}")
    if reranked is not None:
        metrics["rerank"] = {**reranked, "parameters": parameters}
    output = pathlib.Path(_OUTPUT_JSON.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(metrics, indent=2) + "\n")
    if protocol == "sysu":
        title = f"SYSU-MM01 {_SYSU_MODE.value}-search {_SYSU_SHOTS.value}-shot, {_TRIALS.value} trials"
    else:
        title = f"RegDB {_REGDB_DIRECTION.value}"
    print(f"{title}: {format_summary(metrics)}")
    if reranked is not None:
        print(f"{title}, re-ranked (k1={parameters['k1']}, k2={parameters['k2']}, "
              f"lambda={parameters['lambda_value']}): {format_summary(reranked)}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
