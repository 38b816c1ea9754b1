"""The main job end to end on the smoke preset, and its handling of bad flags and data."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from conftest import run_train as _train
from jsia_tf import routing, visualize

REPO = pathlib.Path(__file__).resolve().parents[1]


def _scalars(run_dir, tag):
    events = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    return {event.step: float(tf.make_ndarray(event.tensor_proto)) for event in events.Tensors(tag)}


@pytest.mark.large
def test_smoke_run_writes_config_metrics_checkpoints_and_the_embedder(smoke_run):
    data_dir, run_dir, _, _, _, _ = smoke_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["data_dir"] == str(data_dir)
    assert (config["data"]["height"], config["data"]["width"]) == (32, 16)
    assert [(p["name"], p["epochs"]) for p in config["train"]["phases"]] == [("pretrain_g", 1), ("joint", 1)]
    assert config["train"]["steps_per_epoch"] == 2
    # The preset generated its synthetic RegDB dataset: 8 ids, 10 images per modality.
    assert len(list((data_dir / "Visible").glob("*/*.bmp"))) == 80
    assert len(list((data_dir / "idx").glob("*.txt"))) == 40

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"regdb_v2t", "regdb_t2v", "regdb_intra_rgb", "regdb_intra_ir"}
    for values in metrics.values():
        assert set(values["cmc"]) == {"1", "5", "10", "20"}
        cmc = [values["cmc"][k] for k in ("1", "5", "10", "20")]
        assert cmc == sorted(cmc) and 0.0 <= cmc[0] and cmc[-1] <= 1.0  # CMC is non-decreasing
        assert 0.0 < values["mAP"] <= 1.0
    # Each invocation ended by exporting the embedder: versions 1 (step 2) and 2 (step 4).
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["1", "2"]
    metadata = json.loads((run_dir / "export" / "2" / "assets" / "jsia_metadata.json").read_text())
    assert metadata["checkpoint"].endswith("ckpt-4") and metadata["num_classes"] == 4
    checkpoints = tf.train.get_checkpoint_state(str(run_dir / "checkpoints"))
    assert checkpoints.model_checkpoint_path.endswith("ckpt-4")
    assert tf.train.load_variable(checkpoints.model_checkpoint_path, "step/.ATTRIBUTES/VARIABLE_VALUE") == 4


@pytest.mark.large
def test_second_invocation_resumes_the_step_counter_and_reuses_the_dataset(smoke_run):
    _, run_dir, first, second, first_metrics, data_unchanged = smoke_run
    assert "Training steps 0..2 of 2" in first.stderr
    assert "Resumed from" in second.stderr and "ckpt-2" in second.stderr
    assert "Training steps 2..4 of 4" in second.stderr
    assert "step 3/4 [joint]" in second.stderr and "step 1/" not in second.stderr
    assert data_unchanged and "Generating a synthetic" not in second.stderr
    # The joint phase trained the re-ID encoders: the features, hence the metrics, changed.
    assert json.loads((run_dir / "metrics.json").read_text()) != first_metrics


@pytest.mark.large
def test_summaries_hold_losses_gradient_norms_images_and_evaluation(smoke_run):
    _, run_dir, _, _, _, _ = smoke_run
    events = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    expected = {"loss/recon", "loss/cycle", "loss/gan", "loss/discriminator", "loss/variation", "loss/id_cls",
                "loss/id_triplet", "loss/local_id", "loss/il", "loss/local", "loss/ui", "loss/total",
                "grad_norm/generation", "grad_norm/reid_set_level/generator", "grad_norm/reid_set_level/reid",
                "grad_norm/reid_set_level/alignment", "train/learning_rate_generation", "eval/regdb_intra_ir/rank1",
                "grad_norm/reid_set_level", "train/learning_rate", "train/images_per_second",
                "eval/regdb_v2t/rank1", "eval/regdb_v2t/mAP", "generation/paired", "generation/mixing",
                "eval/similarity_intra_person", "eval/similarity_inter_person"}
    assert expected <= tags
    assert sorted(_scalars(run_dir, "loss/id_cls")) == [3, 4]  # joint steps only
    assert sorted(_scalars(run_dir, "loss/recon")) == [1, 2, 3, 4]
    # lr x 0.1 one epoch (2 steps) into joint training: steps 3, 4 are epoch 0 of it.
    assert _scalars(run_dir, "train/learning_rate")[4] == pytest.approx(1e-3)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert _scalars(run_dir, "eval/regdb_v2t/rank1")[4] == pytest.approx(metrics["regdb_v2t"]["cmc"]["1"], abs=1e-6)
    # --eval_every=3 in the second invocation: step 3, then the final evaluation; the first
    # invocation's final one (step 2) is kept.
    history = json.loads((run_dir / "eval_history.json").read_text())
    assert [entry["step"] for entry in history] == [2, 3, 4]
    assert history[-1]["metrics"] == metrics
    assert sorted(_scalars(run_dir, "eval/regdb_t2v/mAP")) == [2, 3, 4]
    # Fig. 6 grid: per generation image (2 ids x 2 of the smoke preset), real | generated pair |
    # reconstruction | cycle in each modality; Fig. 7: an RGB and an IR strip of 2 real images + 5
    # mixtures. 32x16 images, each framed (visualize.BORDER).
    cell_height, cell_width = 32 + 2 * visualize.BORDER, 16 + 2 * visualize.BORDER
    grid = events.Tensors("generation/paired")[-1].tensor_proto.string_val
    assert (int(grid[0]), int(grid[1])) == (8 * cell_width, 4 * cell_height)
    strip = events.Tensors("generation/mixing")[-1].tensor_proto.string_val
    assert (int(strip[0]), int(strip[1])) == (7 * cell_width, 2 * cell_height)


@pytest.mark.large
def test_mirrored_strategy_over_two_logical_cpus_trains_and_evaluates(smoke_run, tmp_path):
    """tf.distribute path: 2 replicas (logical CPUs), synchronised batch norm, global-batch
    losses; G pre-training steps, a checkpoint, evaluation. A one-device run restores
    that checkpoint (checkpoints do not depend on the strategy)."""
    data_dir = smoke_run[0]
    run_dir = tmp_path / "mirrored"
    result = _train(f"--data_dir={data_dir}", f"--run_dir={run_dir}", "--strategy=mirrored", "--cpu_replicas=2",
                    "--joint_epochs=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 replica(s)" in result.stderr and "step 2/2 [pretrain_g]" in result.stderr
    assert set(json.loads((run_dir / "metrics.json").read_text())) == {"regdb_v2t", "regdb_t2v", "regdb_intra_rgb",
                                                                     "regdb_intra_ir"}
    assert sorted(_scalars(run_dir, "loss/variation")) == [1, 2]
    single = _train(f"--data_dir={data_dir}", f"--run_dir={run_dir}", "--joint_epochs=0")
    assert single.returncode == 0, single.stderr[-3000:]
    assert "1 replica(s)" in single.stderr and "Resumed from" in single.stderr and "(step 2)" in single.stderr


@pytest.mark.large
def test_generation_every_second_step_logs_module_g_at_every_log(smoke_run, tmp_path):
    """--generation_every=2 --log_every=2: joint steps 1 and 3 (1-based) step module G, 2 and 4
    module F alone; each logged window holds one of each, and the log has both, G's terms
    from the window's G step."""
    run_dir = tmp_path / "every2"
    result = _train(f"--data_dir={smoke_run[0]}", f"--run_dir={run_dir}", "--pretrain_epochs=0", "--joint_epochs=2",
                    "--lr_decay_epochs=", "--generation_every=2", "--log_every=2", "--eval_every=0")
    assert result.returncode == 0, result.stderr[-3000:]
    for term in ("recon", "discriminator", "il", "id_cls", "local_id"):
        assert sorted(_scalars(run_dir, f"loss/{term}")) == [2, 4], term


@pytest.mark.parametrize("flag, expected", [
    ("--synthetic_ids=1", "--synthetic_ids=1"),  # found when the dataset is generated
    ("--height=30", "--height=30: expected a multiple of 4"),  # found in the config
    ("--synthetic_test_ids=10", "--synthetic_test_ids=10: expected 0, or with --dataset=sysu"),  # RegDB halves
])
def test_bad_flags_are_one_clear_line_from_the_command(tmp_path, flag, expected):
    result = _train(f"--data_dir={tmp_path / 'data'}", f"--run_dir={tmp_path / 'run'}", flag)
    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert expected in line
    assert "Traceback" not in result.stderr
    assert "--backbone_widths" not in result.stderr  # not absl's usage text: every flag with its help


def test_missing_dataset_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_dataset"
    result = _train(f"--data_dir={missing}", f"--run_dir={tmp_path / 'run'}", "--synthetic_ids=0")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"--data_dir={missing}" in result.stderr


@pytest.mark.parametrize("flag, expected", [
    ("--trial=11", "--trial=11: expected a RegDB trial in 1..10"),
    ("--random_erasing=1.5", "--random_erasing=1.5: expected a probability in [0, 1]"),
    ("--sysu_shots=1,3", "--sysu_shots=(1, 3): expected a non-empty subset of (1, 10)"),
    ("--collective_timeout_s=-1", "--collective_timeout_s=-1.0: expected seconds >= 0"),
    ("--backbone_weights=imagenet", "--backbone_weights='imagenet': expected 'none' for --backbone=resnet18"),
    ("--lr=0", "--lr=0.0: expected > 0"),
    ("--num_regions=-1", "--num_regions=-1: expected >= 0"),
    ("--pretrain_epochs=-1", "--pretrain_epochs=-1: expected >= 0"),
    ("--backbone_widths=8,16", "--backbone_widths=(8, 16): expected 4 positive integers"),
])
def test_bad_model_and_schedule_flags_name_the_flag(flag, expected):
    from absl import flags
    from jsia_tf import config as config_lib
    from jsia_tf import train

    try:
        flags.FLAGS(["train", f"--flagfile={REPO / 'configs' / 'smoke.flags'}", "--data_dir=d", "--run_dir=r", flag])
        with pytest.raises(config_lib.ConfigError) as error:
            train.config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert expected in str(error.value)


def test_flags_are_the_config_fields_with_their_defaults():
    """No flag given: the config's own defaults; each flag sets its field (named by its flag)."""
    import dataclasses
    from absl import flags
    from jsia_tf import config as config_lib
    from jsia_tf import train

    try:
        flags.FLAGS(["train", "--data_dir=d", "--run_dir=r"])
        default = train.config_from_flags()
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", "--data_dir=d", "--run_dir=r", "--sl=separate", "--eval_batch_size=7", "--il=false",
                     "--sysu_shots=10", "--profile_steps=2,3", "--joint_epochs=4", "--generation=true"])
        changed = train.config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert default == config_lib.Config(run_dir="r", data=config_lib.DataConfig(data_dir="d"))
    assert (changed.model.sl, changed.eval.batch_size, changed.loss.il) == ("separate", 7, False)
    assert (changed.eval.sysu_shots, changed.train.profile_steps) == ((10,), (2, 3))
    assert changed.train.phases[1].epochs == 4
    fields = [f for cls in (config_lib.DataConfig, config_lib.EvalConfig, config_lib.ModelConfig,
                            config_lib.LossConfig, config_lib.TrainConfig) for f in dataclasses.fields(cls)]
    assert all(config_lib.flag_name(f) in flags.FLAGS for f in fields if f.name != "phases")


def test_earlier_flag_spellings_still_set_their_field_with_one_log_line(caplog):
    from absl import flags
    from jsia_tf import train

    try:
        flags.FLAGS(["train", "--data_dir=d", "--run_dir=r", "--lr_align=unpaired", "--lambda_lr=0.5"])
        with caplog.at_level("INFO", logger="absl"):
            config = train.config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert (config.loss.local, config.loss.lambda_local) == ("unpaired", 0.5)
    assert "--lr_align is now --local" in caplog.text and "--lambda_lr is now --lambda_local" in caplog.text


@pytest.mark.parametrize("preset", ["demo", "smoke", "learning", "calibration", "regdb", "sysu"])
def test_presets_parse_into_valid_configs(preset):
    from absl import flags
    from jsia_tf import train

    argv = ["train", f"--flagfile={REPO / 'configs' / f'{preset}.flags'}"]
    if preset in ("smoke", "learning"):  # the tests give them their folders
        argv += ["--data_dir=data", "--run_dir=run"]
    try:
        flags.FLAGS(argv)
        cfg = train.config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert cfg.data.dataset == ("regdb" if preset in ("smoke", "regdb") else "sysu")
    if preset in ("regdb", "sysu"):
        # Paper Sec. 4.2: 256x128 inputs, 16 persons x (4 RGB + 4 IR), flip only; ImageNet
        # ResNet-50; G pre-trained 100 epochs, then 50 joint epochs with lr x 0.1 at 30.
        # Optimizers: the official code's per-group settings.
        data, model, train = cfg.data, cfg.model, cfg.train
        assert (data.height, data.width, data.num_ids, data.num_instances) == (256, 128, 16, 4)
        assert (data.flip, data.pad, data.random_erasing, data.channel_aug) == (True, 0, 0.0, 0.0)
        assert (model.backbone, model.backbone_weights, model.num_res_blocks) == ("resnet50", "imagenet", 4)
        assert train.optimizer_settings("reid_set_level") == (4.5e-4, 0.9, 0.999, 5e-4)
        assert train.optimizer_settings("reid_instance_level") == (4.5e-4, 0.9, 0.999, 5e-4)
        for group in ("generation", "discriminators", "variation"):
            assert train.optimizer_settings(group) == (1e-4, 0.5, 0.999, 1e-4)
        assert [(p.name, p.epochs, p.lr_decay_epochs) for p in train.phases] == [
            ("pretrain_g", 100, ()), ("joint", 50, (30,))]
        # The paper pre-trains the generation module, E^i = E^sl included, with G's terms alone.
        assert "reid_set_level" in train.phases[0].groups and "reid_instance_level" not in train.phases[0].groups
        assert train.phases[0].objectives == ("generator", "discriminator", "variation")
    else:  # CPU presets: the tiny ResNet-18
        assert cfg.model.backbone == "resnet18" and cfg.model.backbone_weights == "none"
    if preset == "calibration":  # module F alone, its local classifiers learning identities
        terms = routing.terms_for(routing.configured_terms(cfg), routing.term_weights(cfg.loss),
                                  cfg.train.phases[0].groups)
        assert terms == ("id_cls", "id_triplet", "local_id")
        assert (cfg.data.synthetic_ids, cfg.data.synthetic_test_ids, cfg.data.height) == (900, 100, 128)


def test_graph_optimizer_flag_switches_grappler_for_the_process():
    from jsia_tf import config as config_lib
    from jsia_tf import train

    previous = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    try:
        train.configure_tensorflow(config_lib.TrainConfig(phases=config_lib.paper_phases(1, 1, ()),
                                                          graph_optimizer=False))
        assert tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"] is True
        train.configure_tensorflow(config_lib.TrainConfig(phases=config_lib.paper_phases(1, 1, ())))
        assert tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"] is False
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": previous})


@pytest.mark.large
def test_export_cli_rebuilds_the_run_and_matches_its_own_export(smoke_run, tmp_path):
    _, run_dir, _, _, _, _ = smoke_run
    result = subprocess.run(
        [sys.executable, "-m", "jsia_tf.export", f"--run_dir={run_dir}", f"--export_dir={tmp_path / 'jsia'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 16, 3), dtype=np.uint8)
    rebuilt = tf.saved_model.load(str(tmp_path / "jsia" / "1")).signatures["serving_default"]
    trained = tf.saved_model.load(str(run_dir / "export" / "2")).signatures["serving_default"]
    np.testing.assert_allclose(rebuilt(images=tf.constant(images))["embedding"].numpy(),
                               trained(images=tf.constant(images))["embedding"].numpy(), atol=1e-5)


@pytest.mark.large
def test_export_cli_without_a_checkpoint_is_a_clear_error(smoke_run, tmp_path):
    _, run_dir, _, _, _, _ = smoke_run
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    for name in ("config.json", "dataset.json"):
        (empty_run / name).write_text((run_dir / name).read_text())
    result = subprocess.run(
        [sys.executable, "-m", "jsia_tf.export", f"--run_dir={empty_run}", f"--export_dir={tmp_path / 'jsia'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "no checkpoint" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.large
def test_evaluate_cli_embeds_the_dataset_with_the_exported_model(smoke_run, tmp_path):
    data_dir, run_dir, _, _, _, _ = smoke_run
    output = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, "-m", "jsia_tf.evaluate", f"--saved_model={run_dir / 'export' / '2'}",
         f"--data_dir={data_dir}", "--trial=1", "--protocol=regdb", "--regdb_direction=v2t",
         f"--output_json={output}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # The export holds the preprocessing and the weights of the run's final evaluation.
    served = json.loads(output.read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())["regdb_v2t"]
    assert served["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)
    assert served["cmc"] == pytest.approx(trained["cmc"], abs=1e-6)


def _data_cfg(data_dir, **overrides):
    from jsia_tf import config as config_lib
    fields = dict(dataset="regdb", data_dir=str(data_dir), synthetic_ids=4, height=16, width=8)
    return config_lib.DataConfig(**{**fields, **overrides})


def test_cached_synthetic_dataset_is_regenerated_when_the_flags_or_renderer_change(tmp_path):
    from jsia_tf import config as config_lib
    from jsia_tf import runs
    from jsia_tf.data import synthetic

    data_dir = tmp_path / "synthetic"
    assert len(runs.prepare_dataset(_data_cfg(data_dir)).test) == 2 * 2 * 10
    stamp = json.loads((data_dir / synthetic.METADATA_FILE).read_text())
    assert stamp == synthetic.metadata("regdb", 4, 0, 32, 16)  # rendered at twice the input size
    before = (data_dir / "Visible" / "1" / "v_00001_01.bmp").read_bytes()
    runs.prepare_dataset(_data_cfg(data_dir))  # same flags: reused
    assert (data_dir / "Visible" / "1" / "v_00001_01.bmp").read_bytes() == before
    dataset = runs.prepare_dataset(_data_cfg(data_dir, synthetic_ids=6))  # more ids: regenerated
    assert dataset.num_classes == 3
    (data_dir / synthetic.METADATA_FILE).write_text(json.dumps({**stamp, "render_version": 1}))
    runs.prepare_dataset(_data_cfg(data_dir, synthetic_seed=1))  # an older renderer, another seed
    assert json.loads((data_dir / synthetic.METADATA_FILE).read_text())["seed"] == 1
    assert (data_dir / "Visible" / "1" / "v_00001_01.bmp").read_bytes() != before
    # A folder that this code did not generate is never overwritten.
    (data_dir / synthetic.METADATA_FILE).unlink()
    with pytest.raises(config_lib.ConfigError, match="--data_dir=.*no synthetic.json here"):
        runs.prepare_dataset(_data_cfg(data_dir))
    assert (data_dir / "Visible").is_dir()


def test_the_config_imports_no_tensorflow_and_training_does_not_import_analyze():
    code = ("import sys\n"
            "import jsia_tf.config\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'numpy'})\n"
            "assert not heavy, heavy\n"
            "import jsia_tf.train\n"
            "assert 'jsia_tf.analyze' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_finished_run_on_one_host_skips_the_interpreter_teardown_and_a_multi_worker_run_does_not(monkeypatch):
    from absl import flags
    from absl.testing import flagsaver
    from jsia_tf import train

    ended = []
    monkeypatch.setattr(train, "main", lambda argv: None)
    monkeypatch.setattr(train.distribute, "end_process", ended.append)
    parsed = flags.FLAGS.is_parsed()
    flags.FLAGS.mark_as_parsed()
    try:
        for strategy, expected in (("default", [0]), ("mirrored", [0]), ("multi_worker", [])):
            ended.clear()
            with flagsaver.flagsaver(strategy=strategy):
                train.main_then_exit(["jsia_tf.train"])
            assert ended == expected, strategy
    finally:
        if not parsed:
            flags.FLAGS.unparse_flags()


def test_generation_false_alone_is_module_f_alone_and_conflicts_are_one_error(caplog):
    """--generation=false turns off the terms that need module G (IL, LR, UI) unless given,
    with a log line; flags that contradict it are listed together in one error."""
    from absl import flags
    from jsia_tf import config as config_lib
    from jsia_tf import train

    base = ["train", f"--flagfile={REPO / 'configs' / 'smoke.flags'}", "--data_dir=d", "--run_dir=r"]
    try:
        flags.FLAGS([*base, "--generation=false"])
        with caplog.at_level("INFO", logger="absl"):
            alone = train.config_from_flags()
        flags.FLAGS.unparse_flags()
        flags.FLAGS([*base, "--generation=false", "--local=unpaired"])
        unpaired = train.config_from_flags()
        flags.FLAGS.unparse_flags()
        flags.FLAGS([*base, "--generation=false", "--il", "--ui", "--sl=gan"])
        with pytest.raises(config_lib.ConfigError) as error:
            train.config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    loss = alone.loss
    assert (alone.model.generation, loss.il, loss.local, loss.ui) == (
        False, False, "off", False)
    assert "--generation=false (module F alone) implies --il=False --local=off --ui=False" in caplog.text
    assert (unpaired.loss.local, unpaired.loss.il) == ("unpaired", False)
    assert str(error.value) == (
        "--generation=False: expected module F alone, which these flags contradict: --il=True (expected false: no "
        "generated pairs without module G); --ui=True (expected false: no mixed images without modules G and V); "
        "--sl='gan' (expected 'shared' or 'separate' without module G)")


def test_tensorflow_start_up_lines_are_hidden_in_every_process_unless_asked(tmp_path):
    """A fresh shell: a flag error is the error line alone, though TensorFlow was imported,
    and the dataset renderer's worker processes print nothing; TF_CPP_MIN_LOG_LEVEL=0
    brings TensorFlow's lines back."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "JSIA_TF_QUIET_TENSORFLOW")}
    flag_error = subprocess.run(
        [sys.executable, "-m", "jsia_tf.train", f"--flagfile={REPO / 'configs' / 'smoke.flags'}",
         f"--data_dir={tmp_path / 'data'}", f"--run_dir={tmp_path / 'run'}", "--height=30"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert flag_error.stderr == "error: --height=30: expected a multiple of 4 (--helpfull lists every flag)\n"
    render = ("from jsia_tf.data import synthetic\n"
              f"synthetic.generate({str(tmp_path / 'regdb')!r}, 'regdb', 4, 0, height=8, width=4, num_workers=2)\n"
              "import tensorflow")
    rendered = subprocess.run([sys.executable, "-c", render], cwd=REPO, capture_output=True, text=True, timeout=300,
                              env=env)
    assert rendered.returncode == 0 and rendered.stderr == ""
    asked = subprocess.run([sys.executable, "-c", "import jsia_tf, tensorflow"], cwd=REPO, capture_output=True,
                           text=True, timeout=300, env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert "oneDNN custom operations are on" in asked.stderr


@pytest.mark.parametrize("cpu_flags, expected", [("fpu avx512f avx512_bf16 avx512_vnni", "mixed_bfloat16"),
                                                 ("fpu amx_bf16 amx_tile", "mixed_bfloat16"),
                                                 ("fpu avx512f avx512_vnni", "float32")])
def test_auto_precision_is_bfloat16_only_where_the_cpu_computes_it(cpu_flags, expected, tmp_path):
    from jsia_tf import train

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {cpu_flags}\n\nprocessor\t: 1\n")
    assert not tf.config.list_physical_devices("GPU")  # CI and this machine: training runs on the CPU
    assert train.resolve_precision("auto", cpuinfo) == expected
    for explicit in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert train.resolve_precision(explicit, cpuinfo) == explicit
    assert train.resolve_precision("auto", tmp_path / "missing") == "float32"
