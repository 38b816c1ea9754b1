"""python -m jsia_tf.experiments: the rows of Table 3 with seeds, written to docs/RESULTS.md.

Each (row, seed) is one ``python -m jsia_tf.train`` run in ``<out>/row<r>/seed<s>``:
the base flag file (default: the README's demo preset), the row's switches
(:data:`ROWS`, Sec. 4.4) and ``--seed``. A run that has its ``metrics.json`` is done
and is not run again; an unfinished one resumes from its last checkpoint, so the table
can be built over several invocations (``--budget_s`` stops starting new runs). Every
finished run is then read back:

- the table: mean +- sample std over seeds of rank-1 and mAP, visible->thermal and
  thermal->visible (RegDB protocol) or each SYSU-MM01 setting, replaces the part of
  ``--results`` between :data:`BEGIN` and :data:`END`;
- the learning curves (``--curve``, a PNG): test mAP, the mean over the protocol's
  settings (RegDB: both directions) and the seeds, against the global training step,
  from each run's ``eval_history.json`` (``--eval_every``), for rows 1 (F only) and 6
  (the full model).

The seed changes the weights' initialisation, the identity sampler and the
augmentation; the synthetic benchmark itself is drawn from ``--synthetic_seed``, so
every seed trains on the same data.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app, logging
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jsia_tf import config as config_lib
from jsia_tf import config_flags
from jsia_tf.eval import protocols

# Table 3 (Sec. 4.4): index -> (marks SL, IL, LR, UI; the flags that build it).
# "x" removes a module, "-" is the degraded version; docs/FIDELITY.md explains each. Every
# row names its SL, since the presets differ in it (configs/demo.flags: --sl=separate).
ROWS = {
    1: ("x x x x", ("--generation=false", "--noil", "--local=off", "--num_regions=0", "--noui")),
    2: ("v x x x", ("--sl=shared", "--noil", "--local=off", "--num_regions=0", "--noui")),
    3: ("x v x x", ("--sl=separate", "--local=off", "--num_regions=0", "--noui")),
    4: ("v v x x", ("--sl=shared", "--local=off", "--num_regions=0", "--noui")),
    5: ("v v v x", ("--sl=shared", "--noui")),
    6: ("v v v v", ("--sl=shared",)),
    7: ("- v v v", ("--sl=gan",)),
    8: ("v v - v", ("--sl=shared", "--local=unpaired")),
}
BEGIN, END = "<!-- table3:begin -->", "<!-- table3:end -->"
CURVE_ROWS = (1, 6)
_MARKS = {"v": "✓", "x": "×", "-": "–"}
_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (0, 0, 0))

def run_dir(out, row, seed):
    return pathlib.Path(out) / f"row{row}" / f"seed{seed}"


def train_command(base_flagfile, row, seed, out, extra=()):
    """The ``jsia_tf.train`` command line of (row, seed)."""
    return [sys.executable, "-m", "jsia_tf.train", f"--flagfile={base_flagfile}", *ROWS[row][1], f"--seed={seed}",
            f"--run_dir={run_dir(out, row, seed)}", *extra]


def run_missing(rows, seeds, base_flagfile, out, extra=(), budget_s=0, parallel=1):
    """Runs every (row, seed) without a metrics.json, ``parallel`` at a time.

    With ``parallel`` > 1 each run gets ``os.cpu_count() // parallel`` TensorFlow
    threads: the small networks of the CPU presets use two threads poorly, so two
    one-thread runs side by side finish sooner than the same runs one after the other.
    Returns the (row, seed) runs started, in order. Raises ``CalledProcessError`` for
    the first run that failed, after the others have ended.
    """
    start = time.monotonic()
    todo = [(row, seed) for row in rows for seed in seeds if not (run_dir(out, row, seed) / "metrics.json").exists()]
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads} \
        if parallel > 1 else None
    running, started, failed = [], [], None
    while (todo and failed is None) or running:
        while todo and len(running) < parallel and failed is None:
            if budget_s and time.monotonic() - start > budget_s:
                logging.info("Budget of %d s spent: %s wait for the next call", budget_s, todo)
                todo = []
                break
            row, seed = todo.pop(0)
            command = train_command(base_flagfile, row, seed, out, extra)
            logging.info("Row %d, seed %d: %s", row, seed, " ".join(command[1:]))
            running.append((row, seed, command, time.monotonic(), subprocess.Popen(command, env=env)))
            started.append((row, seed))
        for entry in list(running):
            row, seed, command, began, process = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            if process.returncode:
                failed = failed or subprocess.CalledProcessError(process.returncode, command)
                continue
            (run_dir(out, row, seed) / "experiment.json").write_text(json.dumps(
                {"row": row, "seed": seed, "command": command[1:], "parallel": parallel,
                 "wall_s": round(time.monotonic() - began, 1)}, indent=1) + "\n")
        time.sleep(0.5 if running else 0)
    if failed is not None:
        raise failed
    return started


def collect(rows, seeds, out):
    """{row: {seed: metrics.json}} of the finished runs."""
    found = {}
    for row in rows:
        for seed in seeds:
            path = run_dir(out, row, seed) / "metrics.json"
            if path.exists():
                found.setdefault(row, {})[seed] = json.loads(path.read_text())
    return found


def protocol_settings(metrics):
    """A run's metrics without the diagnostics (``<dataset>_<protocols.DIAGNOSTICS>``)."""
    return {setting: values for setting, values in metrics.items()
            if setting.split("_", 1)[-1] not in protocols.DIAGNOSTICS}


def _mean_std(values):
    values = 100.0 * np.asarray(values)
    if len(values) < 2:
        return f"{values.mean():.1f}"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def table(found):
    """The markdown table: one line per row, mean ± std over its finished seeds."""
    # The protocol's settings in the order the runs wrote them.
    settings = list(dict.fromkeys(s for runs in found.values() for m in runs.values() for s in protocol_settings(m)))
    head = ["index", "SL", "IL", "LR", "UI", "seeds"] + [f"{s} {k}" for s in settings for k in ("R1", "mAP")]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row, runs in sorted(found.items()):
        cells = [str(row), *(_MARKS[m] for m in ROWS[row][0].split()), ",".join(str(s) for s in sorted(runs))]
        for setting in settings:
            cells.append(_mean_std([m[setting]["cmc"]["1"] for m in runs.values()]))
            cells.append(_mean_std([m[setting]["mAP"] for m in runs.values()]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(path, text):
    """Replaces what lies between BEGIN and END in ``path`` (appends both if absent)."""
    path = pathlib.Path(path)
    old = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = old + ("\n" if old else "") + block + "\n"
    path.write_text(new)


def curves(rows, seeds, out):
    """{row: (steps, mean test mAP in %)} over the seeds whose eval_history.json exists."""
    result = {}
    for row in rows:
        histories = [json.loads(p.read_text()) for seed in seeds
                     if (p := run_dir(out, row, seed) / "eval_history.json").exists()]
        if not histories:
            continue
        steps = sorted(set.intersection(*({e["step"] for e in h} for h in histories)))
        means = [100 * np.mean([np.mean([v["mAP"] for v in protocol_settings(entry["metrics"]).values()])
                                for h in histories for entry in h if entry["step"] == step]) for step in steps]
        result[row] = (steps, means)
    return result


def curve_figure(series, size=(640, 400), margin=48):
    """A line chart of {label: (steps, values)}: uint8 [H, W, 3]."""
    figure = Image.new("RGB", size, "white")
    draw, font = ImageDraw.Draw(figure), ImageFont.load_default()
    width, height = size[0] - 2 * margin, size[1] - 2 * margin
    x_max = max(max(steps) for steps, _ in series.values()) or 1
    y_max = max(max(values) for _, values in series.values()) * 1.1 or 1.0
    draw.rectangle([margin, margin, margin + width, margin + height], outline="black")
    for k in range(5):
        y = margin + height - k * height / 4
        draw.text((4, y - 6), f"{k * y_max / 4:.1f}", fill="black", font=font)
        x = margin + k * width / 4
        draw.text((x - 8, margin + height + 6), f"{k * x_max / 4:.0f}", fill="black", font=font)
    draw.text((margin, margin + height + 22), "training step", fill="black", font=font)
    draw.text((margin, 8), "test mAP (%), mean over the protocol's settings and the seeds", fill="black",
              font=font)
    for (label, (steps, values)), colour in zip(series.items(), _COLOURS):
        points = [(margin + s / x_max * width, margin + height - v / y_max * height) for s, v in zip(steps, values)]
        draw.line(points, fill=colour, width=2)
        draw.text((points[-1][0] - 60, points[-1][1] - 14), label, fill=colour, font=font)
    return np.asarray(figure)


def main(argv):
    options = config_flags.options(config_lib.ExperimentsConfig, argv)
    unknown = sorted(set(options.rows) - set(ROWS))
    if unknown:
        raise app.UsageError(f"--rows: {unknown} are not Table 3 indices; expected some of {sorted(ROWS)}")
    if not pathlib.Path(options.base_flagfile).is_file():
        raise app.UsageError(f"--base_flagfile={options.base_flagfile}: no such flag file")
    rows, seeds, out = list(options.rows), list(options.seeds), options.out
    if not options.report_only:
        try:
            run_missing(rows, seeds, options.base_flagfile, out, list(options.train_flags), options.budget_s,
                        options.parallel)
        except subprocess.CalledProcessError as err:
            sys.exit(f"error: a training run failed (exit {err.returncode}): {' '.join(err.cmd[1:])}; "
                     "the finished runs are kept, call again to resume")
    found = collect(rows, seeds, out)
    if not found:
        sys.exit(f"error: no finished run under {out}")
    write_results(options.results, table(found))
    logging.info("Wrote the table of %d runs to %s", sum(len(r) for r in found.values()), options.results)
    series = {f"row {row}": curve for row, curve in curves(CURVE_ROWS, seeds, out).items()}
    if options.curve and series:
        Image.fromarray(curve_figure(series)).save(options.curve)
        logging.info("Wrote the learning curves to %s", options.curve)


def run():
    # Flags are defined only when run as a program, so that importing stays flag-free.
    config_flags.define(config_lib.ExperimentsConfig)
    app.run(main)


if __name__ == "__main__":
    run()
