"""The learning guard: a minute of training must re-identify unseen persons across modalities.

Every other test checks a part; this one checks the product's job. ``configs/learning.flags``
trains module F from random weights on a synthetic SYSU-MM01-layout dataset generated
here, then the main job evaluates on the test identities, which training never saw.
A change that breaks learning (a loss, the batch norm, the sampler, the labels, the
pipeline, the evaluation) drops cross-modality rank-1 to chance; this test fails then.
"""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# How far above chance rank-1 must be (the guard: 5x).
ABOVE_CHANCE = 5.0


@pytest.mark.large
def test_a_minute_of_training_re_identifies_unseen_persons_across_modalities(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jsia_tf.train", f"--flagfile={REPO / 'configs' / 'learning.flags'}",
         f"--data_dir={tmp_path / 'data'}", f"--run_dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    test_ids = len((tmp_path / "data" / "exp" / "test_id.txt").read_text().split(","))
    # SYSU-MM01 all-search single-shot: each IR query ranks one image per (person, RGB
    # camera); identity-level rank-1 by chance is 1 / the test persons in the gallery.
    chance = 1.0 / test_ids
    rank1 = metrics["sysu_all_1shot"]["cmc"]["1"]
    assert rank1 >= ABOVE_CHANCE * chance, (
        f"cross-modality rank-1 {100 * rank1:.2f}% on {test_ids} unseen ids, chance {100 * chance:.2f}%: "
        f"learning is broken ({json.dumps(metrics)})")
    # Each modality alone re-identifies better than across modalities: the gap is the hard part.
    assert metrics["sysu_intra_rgb"]["cmc"]["1"] > rank1 and metrics["sysu_intra_ir"]["cmc"]["1"] > rank1
    # The reverse direction (RGB queries, every IR test image as gallery) learns too.
    assert metrics["sysu_rgb2ir_full"]["cmc"]["1"] >= ABOVE_CHANCE * chance, json.dumps(metrics)
