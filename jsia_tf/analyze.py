"""``python -m jsia_tf.analyze``: looking at a trained model (paper Figs. 4, 6, 7, Table 4).

  python -m jsia_tf.analyze --run_dir=RUN [--data_dir=DIR] [--dataset=regdb|sysu] [--trial=T] \\
      [--out=RUN/analysis] [--checkpoint=CKPT] [--what=paired,...] [the other options of
      jsia_tf.config.AnalysisConfig: --num_identities, --num_queries, --top_k, ...]

``--data_dir``, ``--dataset`` and ``--trial`` default to the run's config. The
networks are in inference mode (module V returns its mean, u). Each kind in
``--what`` writes ``OUT/<kind>.png`` and the same image to TensorBoard under the tag
``analysis/<kind>`` (event files in OUT, the run's checkpoint step; ``tensorboard
--logdir=RUN`` shows them as the run ``analysis``):

- ``paired`` (Fig. 6): for ``num_identities`` test persons, one row each: real RGB |
  X_rgb2ir, the IR image generated from it | real IR | X_ir2rgb (Eq. 3; each
  generated image takes the style of the same person's real image in its modality).
- ``mixing`` (Fig. 7, Eqs. 14, 9, 3): for pairs of those persons (x_1, x_2), a row per
  modality: x_1 | the images decoded from the mixed latent and style codes at
  alpha (the weight of x_1) = 1, 0.75, 0.5, 0.25, 0 | x_2.
- ``similarity`` (Fig. 4): histograms of the cosine similarity of the Eq. 17
  features of every cross-modality (IR x RGB) test pair, intra-person (green) and
  inter-person (red); the overlap area of the two densities is printed.
- ``ranked``: ``num_queries`` random queries of the protocol (RegDB: the
  ``regdb_direction`` query camera against the other; SYSU-MM01: IR queries against
  the all-search single-shot gallery of the first trial, same-room images excluded),
  each followed by its ``top_k`` gallery images: blue border for the query, green
  for the right person, red for another.
- ``quality`` (Table 4, Sec. 4.5): MD and FID of images generated from real images
  (FRI) and from the latent space (FLS), also written to ``OUT/quality.json``. On
  the test persons with images in both modalities, each person's i-th RGB and i-th
  IR image form a real pair (at most ``fid_images`` pairs, drawn with ``seed``):
  FRI images are X_rgb2ir and X_ir2rgb; FLS images decode, per modality, the mixed
  codes of the pair and another person's pair (Eq. 14, alpha ~ U[0, 1]), as the
  training step does. MD (``jsia_tf.eval.quality.identity_distance``: root-mean-square
  gray difference in [0, 1]) is averaged over the paper's generated pairs: FRI
  (X_rgb, X_rgb2ir) and (X_ir, X_ir2rgb); FLS (x_mix_rgb, x_mix_ir). FID is that of
  the Inception pool features of the real test images of a modality and the
  generated images of that modality, averaged over RGB and IR. On a synthetic
  dataset, module G is also measured against the true pairs of its test persons
  (``jsia_tf.eval.ground_truth``: SSIM to the true pair with its floors, identity
  kept, self-reconstruction) under ``"ground_truth"``; the judge embedder is the
  module F of ``--judge_run`` (default: the analysed run's own). Real datasets have
  no true pairs: that part is left out, with a line saying so.
"""

import json
import os
import sys

from absl import app, flags
import numpy as np
from PIL import Image, ImageDraw, ImageFont
import tensorflow as tf

from jsia_tf import config as config_lib
from jsia_tf import config_flags
from jsia_tf import runs, visualize
from jsia_tf.data import pipeline, records, synthetic
from jsia_tf.eval import ground_truth, metrics, protocols, quality, similarity

# Fig. 4 histogram's size.
FIGURE_SIZE = (560, 360)  # width, height
TABLE_SIZE = (380, 110)


# -- pure parts: similarities, overlap, grids, figures ---------------------------------------------


def histogram_figure(intra, inter, overlap, size=FIGURE_SIZE):
    """Fig. 4 as uint8 [height, width, 3]: the two densities overlaid, green intra, red inter."""
    width, height = size
    left, right, top, bottom = 50, 20, 50, 35
    edges = np.linspace(*similarity.SIMILARITY_RANGE, similarity.HISTOGRAM_BINS + 1)
    densities = [np.histogram(x, bins=edges, density=True)[0] for x in (intra, inter)]
    y_max = max(float(d.max()) for d in densities) * 1.05 or 1.0

    def to_x(value):
        return left + (value - edges[0]) / (edges[-1] - edges[0]) * (width - left - right)

    def to_y(density):
        return height - bottom - density / y_max * (height - top - bottom)

    figure = Image.new("RGBA", size, visualize.WHITE + (255,))
    for density, color in zip(densities, (visualize.GREEN, visualize.RED)):
        layer = Image.new("RGBA", size, (0, 0, 0, 0))
        bars = ImageDraw.Draw(layer)
        for low, high, d in zip(edges[:-1], edges[1:], density):
            if d > 0:
                bars.rectangle([to_x(low), to_y(d), to_x(high) - 1, to_y(0)], fill=color + (120,))
        figure = Image.alpha_composite(figure, layer)
    draw, font = ImageDraw.Draw(figure), ImageFont.load_default()
    draw.line([(left, to_y(0)), (width - right, to_y(0))], fill=(0, 0, 0))
    draw.line([(left, to_y(0)), (left, top)], fill=(0, 0, 0))
    for tick in np.linspace(*similarity.SIMILARITY_RANGE, 5):
        draw.line([(to_x(tick), to_y(0)), (to_x(tick), to_y(0) + 4)], fill=(0, 0, 0))
        draw.text((to_x(tick), to_y(0) + 6), f"{tick:g}", fill=(0, 0, 0), font=font, anchor="ma")
    draw.text((left - 4, top), f"{y_max:.2g}", fill=(0, 0, 0), font=font, anchor="rm")
    draw.text((left - 4, to_y(0)), "0", fill=(0, 0, 0), font=font, anchor="rm")
    draw.text((width // 2, height - 4), "cross-modality cosine similarity (density)", fill=(0, 0, 0), font=font,
              anchor="md")
    draw.text((left, 6), f"Fig. 4: intra-person (green, {len(intra)} pairs) vs inter-person (red, {len(inter)})",
              fill=(0, 0, 0), font=font)
    draw.text((left, 24), f"overlap area {overlap:.3f}", fill=(0, 0, 0), font=font)
    return np.asarray(figure.convert("RGB"))


def table_figure(values, size=TABLE_SIZE):
    """Table 4 for one model as uint8 [height, width, 3]: ``values`` is :func:`quality_numbers`' dict."""
    figure = Image.new("RGB", size, visualize.WHITE)
    draw, font = ImageDraw.Draw(figure), ImageFont.load_default()
    draw.text((10, 8), f"Table 4 for this model ({values['pairs']} test pairs)", fill=(0, 0, 0), font=font)
    fid = [f"{values[name]:.4g}" if values[name] is not None else "skipped" for name in ("FID_FRI", "FID_FLS")]
    rows = [("", "FRI", "FLS"), ("MD (identity)", f"{values['MD_FRI']:.4f}", f"{values['MD_FLS']:.4f}"),
            ("FID (distribution)", *fid)]
    for i, row in enumerate(rows):
        for x, text in zip((10, 170, 270), row):
            draw.text((x, 36 + 22 * i), text, fill=(0, 0, 0), font=font)
    return np.asarray(figure)


# -- test images ----------------------------------------------------------------------------------


def paired_rows(test, dataset_name):
    """Real cross-modality pairs of the test set: each person's i-th RGB and i-th IR image.

    Returns:
      (rgb rows [P], ir rows [P], person ids [P]), by person id then i.
    """
    is_rgb = np.isin(test.cams, protocols.RGB_CAMS[dataset_name])
    rgb, ir, pids = [], [], []
    for pid in np.intersect1d(test.pids[is_rgb], test.pids[~is_rgb]):
        rgb_rows = np.flatnonzero(is_rgb & (test.pids == pid))
        ir_rows = np.flatnonzero(~is_rgb & (test.pids == pid))
        n = min(len(rgb_rows), len(ir_rows))
        rgb.append(rgb_rows[:n])
        ir.append(ir_rows[:n])
        pids.append(np.full(n, pid))
    if len(pids) < 2:
        raise ValueError(f"the test set has {len(pids)} persons with images in both modalities; at least 2 needed")
    return np.concatenate(rgb), np.concatenate(ir), np.concatenate(pids)


def pick_persons(test, dataset_name, count, rng):
    """Rows (rgb [n], ir [n]) of one random real pair of each of ``count`` random persons (all if fewer)."""
    rgb, ir, pids = paired_rows(test, dataset_name)
    persons = np.unique(pids)
    persons = np.sort(rng.choice(persons, min(count, len(persons)), replace=False))
    picks = np.array([rng.choice(np.flatnonzero(pids == pid)) for pid in persons])
    return rgb[picks], ir[picks]


def load_batches(test, rows, height, width, batch_size):
    """Caffe-normalised float32 batches [<=batch_size, height, width, 3] of ``test``'s ``rows``."""
    subset = records.ImageList(paths=test.paths[rows], pids=test.pids[rows], cams=test.cams[rows],
                               image_index=test.image_index[rows])
    return pipeline.eval_dataset(subset, height, width, batch_size)


def load_images(test, rows, height, width):
    """Caffe-normalised float32 [len(rows), height, width, 3] (for a few images)."""
    return tf.concat(list(load_batches(test, rows, height, width, max(len(rows), 1))), axis=0)


# -- the model ------------------------------------------------------------------------------------


def mixing_figure(model, gen):
    """Fig. 7 grid [2n (H + 2b), (2 + 5)(W + 2b), 3] of :func:`generate_for_persons`' output: per person
    x_1 and modality, x_1 | mixtures | x_2, the next person (the persons form a cycle)."""
    first = np.arange(int(gen["real"]["rgb"].shape[0]))  # [n] persons
    return visualize.mixing_grid(model, gen, first, (first + 1) % len(first))


def generate_for_persons(trainer, test, dataset_name, options):
    """:meth:`JSIA.generate` in inference mode on one real RGB / IR pair of each of
    ``num_identities`` test persons drawn with ``seed``."""
    data = trainer.config.data
    rgb_rows, ir_rows = pick_persons(test, dataset_name, options.num_identities, np.random.default_rng(options.seed))
    return trainer.model.generate(load_images(test, rgb_rows, data.height, data.width),
                                  load_images(test, ir_rows, data.height, data.width), training=False)


def embed_test_images(trainer, test, batch_size):
    """Eq. 17 features [N, D] of every test image."""
    data = trainer.config.data
    return trainer.embed_images(pipeline.eval_dataset(test, data.height, data.width, batch_size))


def similarity_figure(features, test, dataset_name):
    """Fig. 4 figure and the overlap area of its two densities."""
    intra, inter = similarity.cross_modality_similarities(features, test, dataset_name)
    overlap = similarity.overlap_area(intra, inter)
    return histogram_figure(intra, inter, overlap), overlap


def query_gallery(test, dataset_name, direction, seed):
    """Rows of the protocol's queries [Q] and gallery [G], and allowed [Q, G] (False: SYSU same room)."""
    if dataset_name == "regdb":
        query_cam, gallery_cam = protocols.REGDB_DIRECTION_CAMS[direction]
        queries, gallery = np.flatnonzero(test.cams == query_cam), np.flatnonzero(test.cams == gallery_cam)
    else:
        split = protocols.sysu_split(test.pids, test.cams, test.image_index, mode="all", shots=1, trials=1,
                                     seed=seed)
        queries, gallery = split.queries, split.galleries[0]
    allowed = np.ones((len(queries), len(gallery)), bool)
    if dataset_name == "sysu":
        for ir_cam, rgb_cam in protocols.SYSU_SAME_ROOM.items():
            allowed &= ~((test.cams[queries] == ir_cam)[:, None] & (test.cams[gallery] == rgb_cam)[None, :])
    return queries, gallery, allowed


def ranked_figure(trainer, features, test, dataset_name, options):
    """Ranking grid [q (H + 2b), (1 + top_k)(W + 2b), 3]: query (blue) | top_k gallery images (green / red)."""
    data = trainer.config.data
    queries, gallery, allowed = query_gallery(test, dataset_name, options.regdb_direction, options.seed)
    if allowed.sum(axis=1).min() < options.top_k:
        raise ValueError(f"--top_k={options.top_k}: a query can be ranked against only "
                         f"{allowed.sum(axis=1).min()} gallery images")
    rng = np.random.default_rng(options.seed)
    picked = np.sort(rng.choice(len(queries), min(options.num_queries, len(queries)), replace=False))
    scores = metrics.cosine_similarity(features[queries[picked]], features[gallery])  # [q, G]
    scores[~allowed[picked]] = -np.inf
    top = gallery[np.argsort(-scores, axis=1, kind="stable")[:, :options.top_k]]  # [q, top_k] rows
    rows = np.concatenate([queries[picked][:, None], top], axis=1)  # [q, 1 + top_k]
    pixels = visualize.to_pixels(load_images(test, rows.ravel(), data.height, data.width), unit_range=False)
    correct = test.pids[top] == test.pids[queries[picked]][:, None]  # [q, top_k]
    return visualize.ranked_grid(pixels.reshape(*rows.shape, *pixels.shape[1:]), correct)  # cells [q, 1 + top_k, H, W, 3]


def generated_sets(trainer, test, dataset_name, options):
    """uint8 RGB images of the quality pairs: {"real" | "fri" | "fls": {modality: [P, H, W, 3]}}.

    "fri"[m] holds the generated images OF modality m (X_ir2rgb for "rgb"), row i
    made from real pair i; "fls"[m] the mixture of pair i and a random pair of
    another person, alpha ~ U[0, 1] (seeded), decoded in modality m.
    """
    data = trainer.config.data
    rng = np.random.default_rng(options.seed)
    rgb, ir, pids = paired_rows(test, dataset_name)
    keep = np.sort(rng.choice(len(pids), min(options.fid_images, len(pids)), replace=False))
    rgb, ir, pids = rgb[keep], ir[keep], pids[keep]
    partner = np.array([rng.choice(np.flatnonzero(pids != pid)) for pid in pids])
    alphas = rng.uniform(size=len(pids)).astype(np.float32)
    batches = [load_batches(test, rows, data.height, data.width, options.batch_size)
               for rows in (rgb, ir, rgb[partner], ir[partner])]
    out = {name: {m: [] for m in config_lib.MODALITIES} for name in ("real", "fri", "fls")}
    for start, (rgb_1, ir_1, rgb_2, ir_2) in zip(range(0, len(pids), options.batch_size), zip(*batches)):
        gen = trainer.model.generate(rgb_1, ir_1, training=False)
        alpha = alphas[start:start + len(rgb_1)]
        for m, images_2 in (("rgb", rgb_2), ("ir", ir_2)):
            z_2, _, _ = trainer.model.variation(trainer.model.content(images_2, training=False), training=False)
            codes_2 = (z_2, trainer.model.generators[m].encode_style(trainer.model.to_generation(images_2)))
            out["real"][m].append(visualize.to_pixels(gen["real"][m]))
            out["fri"][m].append(visualize.to_pixels(gen["cross"][m]))
            mixed = trainer.model.decode_mixture(m, visualize.latent_codes(trainer.model, gen, m), codes_2, alpha)
            out["fls"][m].append(visualize.to_pixels(mixed))
    return {name: {m: np.concatenate(images) for m, images in sets.items()} for name, sets in out.items()}


def quality_numbers(images, inception):
    """Table 4 for one model from :func:`generated_sets`' images and an :func:`quality.inception_model`
    (None: the FIDs are None)."""
    fid = {"fri": None, "fls": None}
    if inception is not None:
        features = {name: {m: quality.inception_features(inception, x) for m, x in sets.items()}
                    for name, sets in images.items()}
        fid = {name: float(np.mean([quality.fid(features["real"][m], features[name][m])
                                     for m in config_lib.MODALITIES])) for name in fid}
    md_fri = np.mean([quality.identity_distance(images["real"]["rgb"], images["fri"]["ir"]),  # (X_rgb, X_rgb2ir)
                      quality.identity_distance(images["real"]["ir"], images["fri"]["rgb"])])  # (X_ir, X_ir2rgb)
    md_fls = quality.identity_distance(images["fls"]["rgb"], images["fls"]["ir"])
    return {"MD_FRI": float(md_fri), "MD_FLS": float(md_fls), "FID_FRI": fid["fri"], "FID_FLS": fid["fls"],
            "pairs": len(images["real"]["rgb"])}


def ground_truth_numbers(trainer, test, dataset_name, data_dir, options):
    """``ground_truth.evaluate`` on the dataset's true pairs with the judge of ``options``
    (None, said in a line, where the dataset has none)."""
    pairs = synthetic.read_paired_test(data_dir)
    if pairs is None:
        print(f"Ground truth skipped: {data_dir} holds no true pairs ({synthetic.PAIRED_FILE}); only synthetic "
              "datasets have them.")
        return None
    judge = runs.load_run(options.judge_run)[0] if options.judge_run else trainer
    data = trainer.config.data
    numbers = ground_truth.evaluate(trainer.model, judge.embed, pairs, test, dataset_name, data.height, data.width,
                                    batch_size=options.batch_size)
    numbers["judge"] = options.judge_run or "the analysed run's module F"
    print(ground_truth.summary_line(numbers))
    return numbers


# -- the command ----------------------------------------------------------------------------------


def analyze(run_dir, out=None, options=config_lib.AnalysisConfig(), data_dir=None, dataset=None, trial=None, checkpoint=None):
    """Writes ``out/<kind>.png`` (and ``quality.json``) for each kind of ``options.what``, and TensorBoard images.

    Args:
      run_dir: a training run folder (``runs.load_run``); out: default ``run_dir/analysis``.
      data_dir, dataset, trial: the test set; default the run's config.
      checkpoint: default the newest of the run.
    Returns:
      {kind: uint8 image [H, W, 3]}, plus "quality_numbers" and "overlap" entries
      when those kinds were drawn.
    Raises:
      ValueError: a bad run folder, dataset folder, weights file or option; the
        message names the flag or file.
    """
    out = out or os.path.join(run_dir, "analysis")
    # Bad input fails before the networks are built: the test set, then the FID network.
    data = config_lib.Config.load(os.path.join(run_dir, "config.json")).data
    dataset, data_dir = dataset or data.dataset, data_dir or data.data_dir
    try:
        test = pipeline.load_dataset(dataset, data_dir, trial=trial or data.trial).test
    except ValueError as err:
        raise ValueError(f"--data_dir={data_dir}: not a {dataset} dataset ({err})") from err
    inception = None
    if "quality" in options.what:
        try:
            inception = quality.inception_model(options.inception_weights)
        except ValueError as err:
            if options.inception_weights != "imagenet":  # a file the user named: their mistake
                raise
            # Offline (the default weights are downloaded): every other number and view still helps.
            print(f"FID skipped: {err}. MD and every view are drawn; for FID pass --inception_weights=PATH "
                  "(InceptionV3, include_top=False) or run once online to cache the ImageNet weights.")
    trainer, checkpoint = runs.load_run(run_dir, checkpoint)
    results = {}
    features = gen = None
    for kind in options.what:
        if kind in ("similarity", "ranked") and features is None:
            features = embed_test_images(trainer, test, options.batch_size)
        if kind in ("paired", "mixing") and gen is None:  # the same persons in both figures
            gen = generate_for_persons(trainer, test, dataset, options)
        if kind == "paired":  # Fig. 6: real RGB | X_rgb2ir | real IR | X_ir2rgb per person
            results[kind] = visualize.paired_grid(gen)
        elif kind == "mixing":
            results[kind] = mixing_figure(trainer.model, gen)
        elif kind == "similarity":
            results[kind], results["overlap"] = similarity_figure(features, test, dataset)
            print(f"Fig. 4: overlap area of intra- and inter-person similarity densities {results['overlap']:.4f}")
        elif kind == "ranked":
            results[kind] = ranked_figure(trainer, features, test, dataset, options)
        else:
            numbers = quality_numbers(generated_sets(trainer, test, dataset, options), inception)
            numbers.update(inception_weights=options.inception_weights, checkpoint=checkpoint)
            numbers["ground_truth"] = ground_truth_numbers(trainer, test, dataset, data_dir, options)
            results[kind], results["quality_numbers"] = table_figure(numbers), numbers
            fid = (f"FID FRI {numbers['FID_FRI']:.4g} FLS {numbers['FID_FLS']:.4g}" if inception is not None
                   else "FID skipped")
            print(f"Table 4 ({numbers['pairs']} test pairs): MD FRI {numbers['MD_FRI']:.4f} FLS "
                  f"{numbers['MD_FLS']:.4f} | {fid}")
    write(results, out, options.what, int(trainer.step.numpy()))
    return results


def write(results, out, kinds, step):
    """PNG files, quality.json and TensorBoard images (tags ``analysis/<kind>``) in ``out``."""
    os.makedirs(out, exist_ok=True)
    writer = tf.summary.create_file_writer(out)
    with writer.as_default(step=step):
        for kind in kinds:
            Image.fromarray(results[kind]).save(os.path.join(out, f"{kind}.png"), optimize=True)
            tf.summary.image(f"analysis/{kind}", results[kind][None])
        if "quality_numbers" in results:
            for name in ("MD_FRI", "MD_FLS", "FID_FRI", "FID_FLS"):
                if results["quality_numbers"][name] is not None:
                    tf.summary.scalar(f"analysis/{name}", results["quality_numbers"][name])
            with open(os.path.join(out, "quality.json"), "w") as f:
                json.dump(results["quality_numbers"], f, indent=2)
                f.write("\n")
    writer.close()


def main(argv):
    options = config_flags.options(config_lib.AnalysisConfig, argv)
    values = flags.FLAGS
    try:
        out = values.out or os.path.join(values.run_dir, "analysis")
        analyze(values.run_dir, out, options, data_dir=values.data_dir, dataset=values.dataset, trial=values.trial,
                checkpoint=values.checkpoint)
    except ValueError as err:
        sys.exit(f"error: {err}")
    print(f"wrote {', '.join(f'{kind}.png' for kind in options.what)} to {out}")


def run():
    """Console-script entry point (``jsia-analyze``)."""
    # Flags are defined only when run as a program: importers (train.py, tests) own flags too.
    flags.DEFINE_string("run_dir", None, "Training run folder (config.json, dataset.json, checkpoints/).")
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix; default the newest of the run.")
    flags.DEFINE_string("data_dir", None, "Dataset root; default the run's.")
    flags.DEFINE_enum("dataset", None, list(protocols.PROTOCOLS), "Dataset layout; default the run's.")
    flags.DEFINE_integer("trial", None, "RegDB split; default the run's.")
    flags.DEFINE_string("out", None, "Output folder (PNGs, quality.json, TensorBoard events); default RUN/analysis.")
    config_flags.define(config_lib.AnalysisConfig)
    flags.mark_flags_as_required(["run_dir"])
    app.run(main)


if __name__ == "__main__":
    run()
