"""Every command line takes its option defaults from jsia_tf/config.py (issue 27)."""

import ast
import json
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from jsia_tf import config as config_lib
from jsia_tf import config_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
CLIS = ("jsia_tf/train.py", "jsia_tf/evaluate.py", "jsia_tf/analyze.py", "jsia_tf/export.py",
        "jsia_tf/data/synthetic/cli.py", "jsia_tf/serving/client.py", "jsia_tf/serving/server.py",
        "jsia_tf/experiments.py", "jsia_tf/launch_local.py", "jsia_tf/search.py")


@pytest.mark.parametrize("path", CLIS)
def test_no_cli_writes_a_default_of_its_own(path):
    """A flag defined in a command's module has no default (a path the user gives), is a
    switch that is off, or reads its default from config.py."""
    tree = ast.parse((REPO / path).read_text())
    written = []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr.startswith("DEFINE_") and call.func.attr != "DEFINE_alias"):
            continue
        default = call.args[1] if len(call.args) > 1 else next(k.value for k in call.keywords if k.arg == "default")
        if isinstance(default, ast.Constant) and default.value in (None, False):
            continue
        if "config" not in ast.unparse(default):
            written.append(f"--{ast.literal_eval(call.args[0])}={ast.unparse(default)}")
    assert written == []


@pytest.mark.parametrize("module, cls", [("jsia_tf.analyze", config_lib.AnalysisConfig),
                                         ("jsia_tf.export", config_lib.ExportConfig),
                                         ("jsia_tf.data.synthetic", config_lib.SyntheticConfig),
                                         ("jsia_tf.serving.client", config_lib.ClientConfig),
                                         ("jsia_tf.serving.server", config_lib.ServerConfig),
                                         ("jsia_tf.experiments", config_lib.ExperimentsConfig),
                                         ("jsia_tf.launch_local", config_lib.LaunchConfig),
                                         ("jsia_tf.search", config_lib.SearchConfig)])
def test_cli_flags_are_the_options_of_their_config(module, cls):
    result = subprocess.run([sys.executable, "-m", module, "--helpxml"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    defaults = {flag.findtext("name"): flag.findtext("default")
                for flag in ElementTree.fromstring(result.stdout).iter("flag")}
    for field in config_flags.option_fields(cls):
        value = field.default
        expected = (",".join(map(str, value)) if isinstance(value, tuple) else
                    str(value).lower() if isinstance(value, bool) else str(value))
        assert defaults[config_lib.flag_name(field)] == expected, field.name


_PRESET_CHECK = """
import json, sys
from absl import flags
from jsia_tf import train
out = {}
for preset in sys.argv[1:]:
    argv = ["train", f"--flagfile=configs/{preset}.flags"]
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    given = [f"--{name}=GIVEN" for name in ("data_dir", "run_dir") if not flags.FLAGS[name].value]
    if given:  # the real-data and test presets leave the dataset and the run folder to the user
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv + given)
    cfg = train.config_from_flags()
    out[preset] = {"generation": cfg.model.generation, "sl": cfg.model.sl, "il": cfg.loss.il, "local": cfg.loss.local,
                   "ui": cfg.loss.ui, "size": [cfg.data.height, cfg.data.width], "data_dir": cfg.data.data_dir,
                   "run_dir": cfg.run_dir}
print(json.dumps(out))
"""


def test_every_preset_is_a_valid_config():
    """Each configs/*.flags, nested flag files included, becomes a validated Config (a preset
    naming a removed flag or a contradiction fails here, not in a user's first minute), and
    the README's first command is the whole method at the calibrated benchmark's size."""
    presets = sorted(path.stem for path in (REPO / "configs").glob("*.flags"))
    result = subprocess.run([sys.executable, "-c", _PRESET_CHECK, *presets], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    configs = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(configs) == presets
    assert configs["demo"] == {"generation": True, "sl": "separate", "il": True, "local": "paired", "ui": True,
                               "size": [128, 64], "data_dir": "data/calibration", "run_dir": "runs/demo"}
    assert configs["calibration"]["generation"] is False
    assert {configs[name]["sl"] for name in ("sysu", "regdb")} == {"shared"}  # the paper's SL


@pytest.mark.parametrize("module, args, message", [
    ("jsia_tf.export", ["--run_dir=r", "--export_dir=e", "extra"], "unexpected arguments: ['extra']"),
    ("jsia_tf.analyze", ["--run_dir=r", "--num_identities=1"], "--num_identities=1: expected an integer >= 2"),
    ("jsia_tf.data.synthetic", ["--out=o", "extra"], "unexpected arguments: ['extra']"),
    ("jsia_tf.serving.server", ["--model_base_path=m", "--max_batch_size=0"],
     "--max_batch_size=0: expected a positive integer"),
    ("jsia_tf.serving.client", ["--server=s", "--images=i", "--timeout=0"], "--timeout=0.0: expected seconds > 0"),
    ("jsia_tf.experiments", ["--parallel=0"], "--parallel=0: expected a positive integer"),
    ("jsia_tf.launch_local", ["--workers=0"], "--workers=0: expected a positive integer"),
    # Module G's 32 x 16 images are too small for 2 scales of 4 stride-2 convs.
    ("jsia_tf.train", ["--run_dir=r", "--data_dir=d", "--height=64", "--width=32", "--generation_scale=2"],
     "--disc_num_layers=4: expected at most log2 of the coarsest discriminator scale's side (8 pixels"),
])
def test_a_bad_option_or_argument_is_one_usage_error_before_any_work(module, args, message, tmp_path):
    """``config_flags.options`` starts every command line: the error names the flag, nothing
    is read or written (the folders named do not exist), and no traceback."""
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
