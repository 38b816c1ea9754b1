"""Training-step throughput of the Trainer, per phase: float32 vs mixed_bfloat16 vs XLA
(``jit_compile``), one device vs MirroredStrategy.

``--shapes=demo``: the networks of configs/small.flags at 64x32 (ResNet-18 32..256),
re-ID batch 8 ids x 4, generation batch 2 ids x 3 (the demo's 3 x 3 rounded to an even
number of ids so that 2 replicas get whole identities).
``--shapes=paper``: ResNet-50 (last stride 1) and the paper's module G, V and
discriminators at 256x128; the batches scaled down to ``--paper_num_ids`` x
``--paper_num_instances`` (re-ID) and ``--paper_gan_num_ids`` x ``--paper_gan_num_instances``
(generation) to fit 2 CPU cores.

The batches are fixed random tensors (the input pipeline has its own bench,
bench/input_pipeline.py), so this times the step alone. Each variant builds a Trainer,
traces each phase's step (``get_concrete_function``: Python tracing alone, "tracing s"), takes
one step (graph optimisation, XLA compilation, first-run allocations and the step itself:
"first step s"), then ``--repeats`` times
``--steps`` timed steps; images/s = images per step (RGB + IR of the batches the phase
trains on, as in the training log) / the median seconds per step. "mirrored" splits
the CPU into 2 logical devices: it times the distributed code path, not a speed-up.

Memory: "RSS after" is the process's resident memory after the variant's last step,
"peak RSS" the process's high-water mark so far (``getrusage``), so it is the variant's
own peak only for the first variant run (or a run of one variant).

``--like_official`` leaves out module V, UI and the local regions, which the official
code does not have, to time the same work as its joint step (docs/BENCHMARKS.md,
"Against the official code").

    python bench/train_step.py --shapes=demo [--variants=float32,mixed_bfloat16,jit,mirrored] [--nograppler]

With one variant and one phase, the last line gives each repeat's seconds per step
(``seconds: T1 T2 ...``), which bench/against_official.py reads.
"""

import os
import resource
import time

from absl import app, flags
import numpy as np
import tensorflow as tf

_SHAPES = flags.DEFINE_enum("shapes", "demo", ("demo", "paper"), "Network and image sizes.")
_VARIANTS = flags.DEFINE_list("variants", ["float32", "mixed_bfloat16", "jit", "mirrored"],
                              "float32, mixed_bfloat16, jit (float32 + XLA), mirrored (float32, 2 logical CPUs).")
_PHASES = flags.DEFINE_list("phases", ["pretrain_g", "joint"], "Phases timed.")
_GRAPPLER = flags.DEFINE_bool("grappler", True,
                               "TrainConfig.graph_optimizer: TensorFlow's graph optimizer on the steps.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repeats (median reported).")
_NUM_IDS = flags.DEFINE_integer("paper_num_ids", 2, "--shapes=paper: re-ID identities per batch.")
_NUM_INSTANCES = flags.DEFINE_integer("paper_num_instances", 2, "--shapes=paper: re-ID images per id and modality.")
_GAN_NUM_IDS = flags.DEFINE_integer("paper_gan_num_ids", 2, "--shapes=paper: generation identities per batch.")
_GAN_NUM_INSTANCES = flags.DEFINE_integer("paper_gan_num_instances", 1, "--shapes=paper: generation images per id.")
_LIKE_OFFICIAL = flags.DEFINE_bool(
    "like_official", False, "Leave out the terms the official code does not compute (module V's Eq. 10, UI's "
    "Eqs. 14-15, the local regions' Eq. 12 and their identity loss): the same work as its joint step.")
OFFICIAL_ABSENT_TERMS = ("variation", "ui", "local", "local_id")

NUM_CLASSES = 30  # the demo's training ids; only the classifier's size
VARIANTS = {  # name -> (dtype policy, jit_compile, strategy)
    "float32": ("float32", False, "default"),
    "mixed_bfloat16": ("mixed_bfloat16", False, "default"),
    "jit": ("float32", True, "default"),
    "mirrored": ("float32", False, "mirrored"),
}


def make_config(shapes, variant):
    from jsia_tf import config as config_lib  # after the logical devices are set

    precision, jit, strategy = VARIANTS[variant]
    train = config_lib.TrainConfig(phases=config_lib.paper_phases(1, 1, ()), mixed_precision=precision,
                                   jit_compile=jit, strategy=strategy, cpu_replicas=2 if strategy == "mirrored" else 0,
                                   graph_optimizer=_GRAPPLER.value)
    if shapes == "paper":
        data = config_lib.DataConfig(data_dir="-", num_ids=_NUM_IDS.value, num_instances=_NUM_INSTANCES.value,
                                     gan_num_ids=_GAN_NUM_IDS.value, gan_num_instances=_GAN_NUM_INSTANCES.value)
        model = config_lib.ModelConfig(backbone_weights="none")
    else:
        data = config_lib.DataConfig(data_dir="-", height=64, width=32, num_ids=8, num_instances=4, gan_num_ids=2,
                                     gan_num_instances=3)
        model = config_lib.ModelConfig(
            backbone="resnet18", backbone_weights="none", backbone_widths=(32, 64, 128, 256), num_regions=4,
            style_dim=32, style_base_width=16, style_max_width=64, mlp_hidden_dim=64, num_res_blocks=2,
            disc_num_layers=4, disc_base_width=16, variation_hidden_channels=32, variation_latent_channels=8)
    return config_lib.Config(run_dir="-", data=data, model=model, train=train)


def random_batch(rng, num_ids, num_instances, height, width):
    labels = np.repeat(np.arange(num_ids), num_instances).astype(np.int32)
    images = {m: rng.normal(0.0, 60.0, (len(labels), height, width, 3)).astype(np.float32) for m in ("rgb", "ir")}
    return {**images, "rgb_labels": labels, "ir_labels": labels}


def resident_gib():
    """(resident memory now, the process's peak so far) in GiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_variant(shapes, variant, phases, steps, repeats):
    """{phase name: (images/s, seconds per step, tracing seconds, first step's seconds, (RSS after, peak RSS)
    GiB, each repeat's seconds per step)} of one variant."""
    import keras
    from jsia_tf import train as train_lib
    from jsia_tf import trainer as trainer_lib

    cfg = make_config(shapes, variant)
    train_lib.configure_tensorflow(cfg.train)
    strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if cfg.train.strategy == "mirrored"
                else tf.distribute.get_strategy())
    trainer = trainer_lib.Trainer(cfg, NUM_CLASSES, strategy)
    if _LIKE_OFFICIAL.value:
        trainer.terms = tuple(term for term in trainer.terms if term not in OFFICIAL_ABSENT_TERMS)
    data = cfg.data
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, n, k, data.height, data.width)
               for n, k in ((data.num_ids, data.num_instances), (data.gan_num_ids, data.gan_num_instances))]
    # Distributed like the training job's batches: each replica gets its contiguous half.
    reid, gan = (next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(b).repeat())))
                 for b in batches)
    results = {}
    for phase in cfg.train.phases:
        if phase.name not in phases:
            continue
        start = time.perf_counter()
        trainer.step_function(phase).get_concrete_function(reid, gan)
        tracing = time.perf_counter() - start
        start = time.perf_counter()
        trainer.train_step(phase, reid, gan)["loss/total"].numpy()  # Grappler / XLA, first allocations
        first = time.perf_counter() - start
        if trainer.step_function(phase).experimental_get_tracing_count() != 1:
            raise RuntimeError(f"{phase.name}: the first step traced again; 'first step s' would include tracing")
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                out = trainer.train_step(phase, reid, gan)
            out["loss/total"].numpy()
            seconds.append((time.perf_counter() - start) / steps)
        per_step = float(np.median(seconds))
        results[phase.name] = (train_lib.images_per_step(phase, data) / per_step, per_step, tracing, first,
                               resident_gib(), seconds)
    keras.mixed_precision.set_global_policy("float32")
    return results


def main(argv):
    del argv
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    load_before = os.getloadavg()[0]
    rows = {variant: time_variant(_SHAPES.value, variant, _PHASES.value, _STEPS.value, _REPEATS.value)
            for variant in _VARIANTS.value}
    data = make_config(_SHAPES.value, "float32").data
    print(f"--shapes={_SHAPES.value}: {data.height}x{data.width}, re-ID {data.num_ids} x {data.num_instances}, "
          f"generation {data.gan_num_ids} x {data.gan_num_instances} (per modality); "
          f"{'like the official code; ' if _LIKE_OFFICIAL.value else ''}{os.cpu_count()} cores; "
          f"median of {_REPEATS.value} x {_STEPS.value} steps; load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f}")
    first = _VARIANTS.value[0]
    print(f"| variant | phase | images/s | s/step | vs {first} | tracing s | first step s | RSS after GiB | "
          "peak RSS GiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for variant, phases in rows.items():
        for phase, (rate, seconds, tracing, first_step, (rss, peak), _) in phases.items():
            print(f"| {variant} | {phase} | {rate:.2f} | {seconds:.3f} | x{rate / rows[first][phase][0]:.2f} | "
                  f"{tracing:.1f} | {first_step:.1f} | {rss:.2f} | {peak:.2f} |")
    if len(rows) == 1 and len(rows[first]) == 1:  # one row: its repeats, for bench/against_official.py
        print("seconds: " + " ".join(f"{s:.3f}" for s in next(iter(rows[first].values()))[-1]))


if __name__ == "__main__":
    app.run(main)
