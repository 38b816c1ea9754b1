"""jsia_tf's joint step against the official PyTorch code's, bracketed so that the ratio
survives a re-run: official, then each jsia_tf row, then official again, one process at a
time, each started only once the machine is quiet (1-minute load average below
``--max_load``).

The official step varies more than ours from run to run (docs/BENCHMARKS.md, "Against the
official code"), so one official run is not a baseline: each jsia_tf row's ratio is
given against both official medians, and the headline is the less favourable one,
against the faster official run.

``--official`` is a shell command run in ``--official_dir`` (the official code and its
timing harness stay outside this repository; BENCHMARKS.md says what the harness
changes): it must end its output with a line ``seconds: T1 T2 ...``, the timed single
steps. jsia_tf's rows are ``bench/train_step.py --shapes=paper --phases=joint`` with
the batch below, one process per row (``--ours``: ``like_official`` and/or ``every_term``).

    python bench/against_official.py --official_dir=~/jsia_official \\
        --official="python bench_step.py --steps=3" [--precision=float32]
"""

import os
import re
import shlex
import statistics
import subprocess
import sys
import time

from absl import app, flags

_OFFICIAL = flags.DEFINE_string("official", None, "Shell command that times the official joint step.")
_OFFICIAL_DIR = flags.DEFINE_string("official_dir", None, "Folder the --official command runs in.")
_OURS = flags.DEFINE_list("ours", ["like_official", "every_term"], "jsia_tf rows between the official runs.")
_PRECISION = flags.DEFINE_enum("precision", "float32", ("float32", "mixed_bfloat16"), "jsia_tf's precision.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "jsia_tf: timed single steps (bench/train_step.py --repeats).")
_MAX_LOAD = flags.DEFINE_float("max_load", 0.8, "Wait for a 1-minute load average below this before each run.")
_WAIT_S = flags.DEFINE_integer("max_wait_s", 1800, "Give up waiting for a quiet machine after this long.")
flags.mark_flags_as_required(["official", "official_dir"])
flags.register_validator("ours", lambda rows: set(rows) <= {"like_official", "every_term"},
                         "--ours: expected like_official and/or every_term")

# The official code's batches (docs/BENCHMARKS.md): re-ID 4 ids x 4 per modality, generation 3 x 3.
BATCH = ["--paper_num_ids=4", "--paper_num_instances=4", "--paper_gan_num_ids=3", "--paper_gan_num_instances=3"]
TRAIN_STEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_step.py")
SECONDS_LINE = re.compile(r"^seconds:((?:\s+[\d.]+)+)\s*$", re.MULTILINE)


def wait_until_quiet():
    start = time.monotonic()
    while os.getloadavg()[0] >= _MAX_LOAD.value:
        if time.monotonic() - start > _WAIT_S.value:
            sys.exit(f"the load average stayed at {os.getloadavg()[0]:.1f}, above --max_load={_MAX_LOAD.value}, "
                     f"for --max_wait_s={_WAIT_S.value} s: not timing on a busy machine")
        time.sleep(15)
    return os.getloadavg()[0]


def run_timed(label, command, cwd):
    """The step seconds that ``command`` prints on its ``seconds:`` line."""
    load = wait_until_quiet()
    print(f"[{time.strftime('%H:%M:%S')}] {label} (load {load:.2f}): {command}", flush=True)
    result = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True)
    found = SECONDS_LINE.findall(result.stdout)
    if result.returncode != 0 or not found:
        sys.exit(f"{label} failed (exit {result.returncode}) or printed no 'seconds:' line:\n"
                 f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    seconds = [float(s) for s in found[-1].split()]
    print(f"  {label}: median {statistics.median(seconds):.1f} s ({min(seconds):.1f}-{max(seconds):.1f})", flush=True)
    return seconds


def ours_command(row):
    return " ".join([shlex.quote(sys.executable), shlex.quote(TRAIN_STEP), "--shapes=paper", "--phases=joint",
                     f"--variants={_PRECISION.value}", "--steps=1", f"--repeats={_REPEATS.value}", *BATCH,
                     "--like_official" if row == "like_official" else "--nolike_official"])


def main(argv):
    del argv
    official_dir = os.path.expanduser(_OFFICIAL_DIR.value)
    runs = [("official, run A", run_timed("official, run A", _OFFICIAL.value, official_dir))]
    for row in _OURS.value:
        label = f"jsia_tf {row.replace('_', ' ')}, {_PRECISION.value}"
        runs.append((label, run_timed(label, ours_command(row), None)))
    runs.append(("official, run B", run_timed("official, run B", _OFFICIAL.value, official_dir)))
    medians = {label: statistics.median(seconds) for label, seconds in runs}
    run_a, run_b = medians["official, run A"], medians["official, run B"]
    print("\n| what | s / step, median (range) | official A / this | official B / this | headline |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, seconds in runs:
        ratios = ("", "", "") if label.startswith("official") else (
            f"x{run_a / medians[label]:.2f}", f"x{run_b / medians[label]:.2f}",
            f"**x{min(run_a, run_b) / medians[label]:.2f}**")
        print(f"| {label} | {medians[label]:.1f} ({min(seconds):.1f}-{max(seconds):.1f}) | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    app.run(main)
