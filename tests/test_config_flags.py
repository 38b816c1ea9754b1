"""Every command line takes its option defaults from jsia_tf/config.py (issue 27)."""

import ast
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
        "jsia_tf/experiments.py", "jsia_tf/launch_local.py")


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
                                         ("jsia_tf.launch_local", config_lib.LaunchConfig)])
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
