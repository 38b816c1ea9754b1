"""The run configuration: frozen, validated dataclasses.

Flags become a :class:`Config` once, in the entry point (``train.py``); nothing
below it reads absl flags. Validation names the flag and the value it rejects.
The resolved config is written to ``<run_dir>/config.json``.
"""

import dataclasses
import json
import pathlib

from jsia_tf.data import regdb
from jsia_tf.eval import protocols

DATASETS = protocols.PROTOCOLS
SYSU_MODES = tuple(protocols.SYSU_MODES)
SYSU_SHOTS = protocols.SYSU_SHOTS
REGDB_DIRECTIONS = tuple(protocols.REGDB_DIRECTIONS)


class ConfigError(ValueError):
    """A flag has a value the run cannot use."""

    def __init__(self, flag, value, expected):
        super().__init__(f"--{flag}={value!r}: expected {expected}")
        self.flag = flag


def _require(ok, flag, value, expected):
    if not ok:
        raise ConfigError(flag, value, expected)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Dataset, image size and the cross-modal identity sampler (paper Sec. 4.2).

    Attributes:
      dataset: "regdb" or "sysu" (the folder layout and evaluation protocol).
      data_dir: dataset root.
      trial: RegDB train/test split, 1..10.
      synthetic_ids: when > 0 and ``data_dir`` holds no dataset yet, generate a
        synthetic one with this many identities there first (demo/smoke presets).
      height, width: network input size (paper: 256 x 128).
      num_ids, num_instances: P identities x K images per modality per re-ID
        batch (paper: 16 x 4, so 128 images).
      gan_num_ids, gan_num_instances: the same for the generation batches
        (official code: 3 x 3).
      flip, pad, random_erasing, channel_aug: training augmentation.
      seed: seeds the sampler and the augmentation.
    """

    dataset: str = "regdb"
    data_dir: str = ""
    trial: int = 1
    synthetic_ids: int = 0
    height: int = 256
    width: int = 128
    num_ids: int = 16
    num_instances: int = 4
    gan_num_ids: int = 3
    gan_num_instances: int = 3
    flip: bool = True
    pad: int = 10
    random_erasing: float = 0.5
    channel_aug: float = 0.0
    seed: int = 0

    def __post_init__(self):
        _require(self.dataset in DATASETS, "dataset", self.dataset, f"one of {DATASETS}")
        _require(bool(self.data_dir), "data_dir", self.data_dir, "a dataset folder")
        _require(self.trial in regdb.TRIALS, "trial", self.trial, "a RegDB trial in 1..10")
        _require(self.synthetic_ids >= 0, "synthetic_ids", self.synthetic_ids, ">= 0")
        for flag in ("height", "width", "num_ids", "num_instances", "gan_num_ids", "gan_num_instances"):
            _require(getattr(self, flag) > 0, flag, getattr(self, flag), "a positive integer")
        _require(self.pad >= 0, "pad", self.pad, ">= 0")
        for flag in ("random_erasing", "channel_aug"):
            _require(0.0 <= getattr(self, flag) <= 1.0, flag, getattr(self, flag), "a probability in [0, 1]")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol options (SYSU-MM01: Wu et al. 2017; RegDB: AGW).

    Attributes:
      sysu_modes, sysu_shots: the SYSU-MM01 settings evaluated.
      sysu_rand_perm: path of the official ``rand_perm_cam.mat``; empty = seeded galleries.
      trials: SYSU-MM01 gallery draws averaged.
      regdb_directions: RegDB query -> gallery directions evaluated.
      batch_size: images per embedding batch.
    """

    sysu_modes: tuple = SYSU_MODES
    sysu_shots: tuple = SYSU_SHOTS
    sysu_rand_perm: str = ""
    trials: int = 10
    regdb_directions: tuple = REGDB_DIRECTIONS
    batch_size: int = 64

    def __post_init__(self):
        _require(set(self.sysu_modes) <= set(SYSU_MODES) and self.sysu_modes, "sysu_modes",
                 self.sysu_modes, f"a non-empty subset of {SYSU_MODES}")
        _require(set(self.sysu_shots) <= set(SYSU_SHOTS) and self.sysu_shots, "sysu_shots",
                 self.sysu_shots, f"a non-empty subset of {SYSU_SHOTS}")
        _require(not self.sysu_rand_perm or pathlib.Path(self.sysu_rand_perm).is_file(),
                 "sysu_rand_perm", self.sysu_rand_perm, "an existing rand_perm_cam.mat file")
        _require(self.trials > 0, "trials", self.trials, "a positive integer")
        _require(set(self.regdb_directions) <= set(REGDB_DIRECTIONS) and self.regdb_directions,
                 "regdb_directions", self.regdb_directions, f"a non-empty subset of {REGDB_DIRECTIONS}")
        _require(self.batch_size > 0, "eval_batch_size", self.batch_size, "a positive integer")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything one run needs.

    Attributes:
      run_dir: checkpoints, TensorBoard events, config.json and metrics go here.
      data: dataset and input pipeline.
      eval: evaluation protocol.
      steps: training steps of this run.
      log_every: steps between progress lines and scalar summaries.
    """

    run_dir: str
    data: DataConfig
    eval: EvalConfig = EvalConfig()
    steps: int = 10
    log_every: int = 5

    def __post_init__(self):
        _require(bool(self.run_dir), "run_dir", self.run_dir, "a run folder")
        _require(self.steps >= 0, "steps", self.steps, ">= 0")
        _require(self.log_every > 0, "log_every", self.log_every, "a positive integer")

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def save(self, path):
        pathlib.Path(path).write_text(self.to_json() + "\n")
