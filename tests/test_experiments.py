"""python -m jsia_tf.experiments: Table 3's rows, mean +- std over seeds, resumable, learning curves."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from jsia_tf import experiments

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _metrics(v2t, t2v):
    def summary(r1, ap):
        return {"cmc": {"1": r1, "5": r1, "10": r1, "20": r1}, "mAP": ap, "mINP": ap}
    return {"regdb_v2t": summary(*v2t), "regdb_t2v": summary(*t2v), "regdb_intra_rgb": summary(0.9, 0.9),
            "regdb_rgb2ir_full": summary(0.8, 0.8)}  # diagnostics: not the protocol's columns


def _finish(out, row, seed, metrics, history=None):
    folder = experiments.run_dir(out, row, seed)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if history is not None:
        (folder / "eval_history.json").write_text(json.dumps(history))


def test_table_is_mean_and_sample_std_over_the_finished_seeds(tmp_path):
    _finish(tmp_path, 1, 0, _metrics((0.10, 0.20), (0.30, 0.40)))
    _finish(tmp_path, 1, 1, _metrics((0.20, 0.30), (0.50, 0.40)))
    _finish(tmp_path, 6, 0, _metrics((0.40, 0.50), (0.60, 0.70)))
    found = experiments.collect([1, 6], [0, 1, 2], tmp_path)
    assert {row: sorted(runs) for row, runs in found.items()} == {1: [0, 1], 6: [0]}
    lines = experiments.table(found).splitlines()
    assert lines[0] == ("| index | SL | IL | LR | UI | seeds | regdb_v2t R1 | regdb_v2t mAP | regdb_t2v R1 | "
                        "regdb_t2v mAP |")
    # t2v R1 of row 1: 30 and 50 -> mean 40, sample std 14.1; mAP 40 and 40 -> 0.0.
    assert lines[2] == "| 1 | × | × | × | × | 0,1 | 15.0 ± 7.1 | 25.0 ± 7.1 | 40.0 ± 14.1 | 40.0 ± 0.0 |"
    assert lines[3] == "| 6 | ✓ | ✓ | ✓ | ✓ | 0 | 40.0 | 50.0 | 60.0 | 70.0 |"


def test_results_are_replaced_between_the_markers_only(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# Results\n\nbefore\n{experiments.BEGIN}\nold table\n{experiments.END}\nafter\n")
    experiments.write_results(path, "new table")
    assert path.read_text() == f"# Results\n\nbefore\n{experiments.BEGIN}\nnew table\n{experiments.END}\nafter\n"
    fresh = tmp_path / "fresh.md"
    experiments.write_results(fresh, "t")
    assert fresh.read_text() == f"{experiments.BEGIN}\nt\n{experiments.END}\n"


def test_learning_curves_average_the_seeds_at_common_steps(tmp_path):
    def entry(step, ap):
        return {"step": step, "metrics": _metrics((0.0, ap), (0.0, ap + 0.1))}
    _finish(tmp_path, 1, 0, {}, [entry(50, 0.1), entry(100, 0.2)])
    _finish(tmp_path, 1, 1, {}, [entry(50, 0.3), entry(100, 0.4), entry(150, 0.5)])
    steps, values = experiments.curves([1, 6], [0, 1], tmp_path)[1]
    assert steps == [50, 100]  # 150 only in one seed
    np.testing.assert_allclose(values, [25.0, 35.0])  # mean of (10, 20, 30, 40) and (20, 30, 40, 50)
    image = experiments.curve_figure({"row 1": (steps, values)})
    assert image.shape == (400, 640, 3) and image.dtype == np.uint8
    assert (image != 255).any(axis=-1).sum() > 1000  # axes, labels and the line are drawn


class _FakeProcess:
    """Stands for a finished training run: writes its metrics.json (or fails)."""

    def __init__(self, command, env=None):
        self.command, self.env = command, env
        self.returncode = 1 if "--seed=9" in command else 0
        folder = pathlib.Path(next(a for a in command if a.startswith("--run_dir=")).split("=", 1)[1])
        folder.mkdir(parents=True, exist_ok=True)
        if not self.returncode:
            (folder / "metrics.json").write_text("{}")

    def poll(self):
        return self.returncode


@pytest.mark.parametrize("parallel", [1, 2])
def test_finished_runs_are_not_run_again(tmp_path, monkeypatch, parallel):
    _finish(tmp_path, 1, 0, _metrics((0.1, 0.1), (0.1, 0.1)))
    processes = []
    monkeypatch.setattr(subprocess, "Popen", lambda command, env: processes.append(_FakeProcess(command, env))
                        or processes[-1])
    started = experiments.run_missing([1, 5], [0, 1], "configs/demo.flags", tmp_path, extra=["--eval_every=50"],
                                      parallel=parallel)
    assert started == [(1, 1), (5, 0), (5, 1)]
    assert processes[1].command == [sys.executable, "-m", "jsia_tf.train", "--flagfile=configs/demo.flags", "--sl=shared",
                                    "--noui",
                                    "--seed=0", f"--run_dir={tmp_path / 'row5' / 'seed0'}", "--eval_every=50"]
    threads = [p.env and p.env["TF_NUM_INTRAOP_THREADS"] for p in processes]
    assert threads == ([None] * 3 if parallel == 1 else [str(max(1, os.cpu_count() // 2))] * 3)
    record = json.loads((tmp_path / "row5" / "seed1" / "experiment.json").read_text())
    assert (record["row"], record["seed"], record["parallel"]) == (5, 1, parallel)
    assert experiments.run_missing([1, 5], [0, 1], "configs/demo.flags", tmp_path) == []
    # A failed run is reported after the others ended; the finished ones stay finished.
    with pytest.raises(subprocess.CalledProcessError):
        experiments.run_missing([6], [9, 3], "configs/demo.flags", tmp_path, parallel=parallel)
    assert (tmp_path / "row6" / "seed3" / "metrics.json").exists() == (parallel == 2)


def test_fidelity_table_states_the_flags_of_each_row():
    """docs/FIDELITY.md's Table 3 lists, for each index, exactly the flags that ROWS runs."""
    text = (ROOT / "docs" / "FIDELITY.md").read_text()
    rows = dict(re.findall(r"^\| (\d) \| [^|]+\| [^|]+\| [^|]+\| [^|]+\| [^|]+\| (.*) \|$", text, re.M))
    assert sorted(int(r) for r in rows) == sorted(experiments.ROWS)
    for row, (_, flags) in experiments.ROWS.items():
        assert re.findall(r"`([^`]+)`", rows[str(row)]) == [" ".join(flags)] if flags else "defaults" in rows[str(row)]


def test_bad_rows_name_the_flag(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jsia_tf.experiments", "--rows=1,9", f"--out={tmp_path}"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode != 0 and "--rows: [9] are not Table 3 indices" in result.stderr
    assert "Traceback" not in result.stderr
