"""`python -m jsia_tf.evaluate`: the JSON contract, the summary line and clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jsia_tf.eval import protocols

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jsia_tf.evaluate", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def sysu_npz(tmp_path):
    """Four persons, every camera, 2-4 images each, random features."""
    rng = np.random.default_rng(1)
    rows = [(cam, pid, i) for cam in protocols.SYSU_CAMS for pid in range(1, 5)
            for i in range(1, rng.integers(2, 5) + 1)]
    cams, labels, image_index = (np.array(x) for x in zip(*rows))
    arrays = {"features": rng.normal(size=(len(rows), 8)).astype(np.float32), "labels": labels, "cams": cams,
              "image_index": image_index}
    path = tmp_path / "features.npz"
    np.savez(path, **arrays)
    return path, arrays


def test_sysu_writes_the_protocol_metrics(tmp_path, sysu_npz):
    path, arrays = sysu_npz
    out = tmp_path / "out" / "metrics.json"
    result = run_cli(f"--features={path}", "--protocol=sysu", "--sysu_mode=indoor", "--sysu_shots=10",
                     "--trials=3", "--seed=4", f"--output_json={out}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert metrics == protocols.evaluate_features(**arrays, protocol="sysu", sysu_mode="indoor", sysu_shots=10,
                                                  trials=3, seed=4)
    assert list(metrics) == ["cmc", "mAP", "mINP"] and list(metrics["cmc"]) == ["1", "5", "10", "20"]
    assert f"SYSU-MM01 indoor-search 10-shot, 3 trials: R1 {100 * metrics['cmc']['1']:.2f}%" in result.stdout


def test_regdb_hand_computed(tmp_path):
    # Visible x thermal cosines [[0.894, 0.995], [0.447, 0.0995]]: both visible queries
    # find the wrong person first (rank 2, AP = INP = 0.5).
    path, out = tmp_path / "regdb.npz", tmp_path / "regdb.json"
    np.savez(path, features=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.5], [1.0, 0.1]]),
             labels=np.array([1, 2, 1, 2]), cams=np.array([1, 1, 2, 2]))
    result = run_cli(f"--features={path}", "--protocol=regdb", "--regdb_direction=v2t", f"--output_json={out}")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == {"cmc": {"1": 0.0, "5": 1.0, "10": 1.0, "20": 1.0}, "mAP": 0.5,
                                           "mINP": 0.5}
    assert "RegDB v2t: R1 0.00% R5 100.00% R10 100.00% R20 100.00% mAP 50.00% mINP 50.00%" in result.stdout


def test_rerank_adds_the_reranked_metrics(tmp_path, sysu_npz):
    path, arrays = sysu_npz
    common = (f"--features={path}", "--protocol=sysu", "--sysu_shots=10", "--trials=2")
    plain_out, rerank_out = tmp_path / "plain.json", tmp_path / "rerank.json"
    plain = run_cli(*common, f"--output_json={plain_out}")
    result = run_cli(*common, "--rerank", "--rerank_k1=5", "--rerank_k2=2", "--rerank_lambda=0.4",
                     f"--output_json={rerank_out}")
    assert plain.returncode == 0 and result.returncode == 0, result.stderr
    metrics = json.loads(rerank_out.read_text())
    assert list(metrics) == ["cmc", "mAP", "mINP", "rerank"]
    assert list(metrics["rerank"]) == ["cmc", "mAP", "mINP", "parameters"]
    # The plain numbers are those of a run without --rerank.
    assert {k: v for k, v in metrics.items() if k != "rerank"} == json.loads(plain_out.read_text())
    parameters = {"k1": 5, "k2": 2, "lambda_value": 0.4}
    assert metrics["rerank"] == {**protocols.evaluate_features(**arrays, protocol="sysu", sysu_shots=10, trials=2,
                                                               rerank=parameters), "parameters": parameters}
    assert metrics["rerank"]["mAP"] != metrics["mAP"]
    assert f"SYSU-MM01 all-search 10-shot, 2 trials: R1 {100 * metrics['cmc']['1']:.2f}%" in result.stdout
    assert (f"SYSU-MM01 all-search 10-shot, 2 trials, re-ranked (k1=5, k2=2, lambda=0.4): "
            f"R1 {100 * metrics['rerank']['cmc']['1']:.2f}%") in result.stdout


def test_rerank_defaults_on_regdb(tmp_path):
    rng = np.random.default_rng(2)
    path, out = tmp_path / "regdb.npz", tmp_path / "regdb.json"
    labels, cams, features = np.tile(np.repeat(np.arange(5), 4), 2), np.repeat([1, 2], 20), rng.normal(size=(40, 8))
    np.savez(path, features=features, labels=labels, cams=cams)
    result = run_cli(f"--features={path}", "--protocol=regdb", "--regdb_direction=t2v", "--rerank",
                     f"--output_json={out}")
    assert result.returncode == 0, result.stderr
    reranked = json.loads(out.read_text())["rerank"]
    assert reranked["parameters"] == {"k1": 20, "k2": 6, "lambda_value": 0.3}
    assert reranked == {**protocols.evaluate_regdb(features, labels, cams, "t2v", rerank=reranked["parameters"]),
                        "parameters": reranked["parameters"]}


def test_errors_name_the_file_or_flag(tmp_path, sysu_npz):
    path, arrays = sysu_npz
    out = f"--output_json={tmp_path / 'x.json'}"
    no_index = tmp_path / "no_index.npz"
    np.savez(no_index, **{k: v for k, v in arrays.items() if k != "image_index"})
    missing = tmp_path / "none.npz"
    float_labels = tmp_path / "float_labels.npz"
    np.savez(float_labels, **{**arrays, "labels": arrays["labels"].astype(float)})
    cases = {
        (f"--features={no_index}", "--protocol=sysu"): f"{no_index} lacks ['image_index']",
        (f"--features={float_labels}", "--protocol=sysu"): f"--features={float_labels}: labels must be an integer",
        (f"--features={missing}", "--protocol=regdb"): f"cannot read {missing} as an .npz file",
        (f"--features={path}", "--protocol=sysu", f"--sysu_rand_perm={missing}"):
            f"cannot read {missing} as a MATLAB .mat file",
        (f"--features={path}", "--protocol=market"): "--protocol",
        (f"--features={path}", "--protocol=sysu", "--sysu_shots=5"): "--sysu_shots",
        (f"--features={path}", "--protocol=sysu", "--regdb_direction=t2v"):
            "--regdb_direction: only used with --protocol=regdb",
        (f"--features={path}", "--protocol=regdb", "--sysu_mode=indoor"):
            "--sysu_mode: only used with --protocol=sysu",
        (f"--features={path}", "--protocol=sysu", "--rerank_k1=5", "--rerank_lambda=0.5"):
            "--rerank_k1, --rerank_lambda: only used with --rerank",
        (f"--features={path}", "--protocol=sysu", "--rerank", "--rerank_lambda=1.5"): "--rerank_lambda",
        (f"--features={path}", "--protocol=sysu", "--rerank", "--rerank_k2=0"): "--rerank_k2",
        ("--protocol=regdb",): "give either --features=F.npz or one model (--saved_model=DIR or --tflite=FILE) "
                               "and --data_dir=DIR",
        (f"--saved_model={tmp_path}", "--protocol=regdb"): "and --data_dir=DIR",
        (f"--features={path}", f"--saved_model={tmp_path}", f"--data_dir={tmp_path}", "--protocol=regdb"):
            "give either --features=F.npz",
        (f"--saved_model={tmp_path}", f"--tflite={tmp_path / 'm.tflite'}", f"--data_dir={tmp_path}",
         "--protocol=regdb"): "one model",
        (f"--tflite={tmp_path / 'model'}", f"--data_dir={tmp_path}", "--protocol=regdb"):
            f"--tflite={tmp_path / 'model'}: expected a .tflite file",
        (f"--saved_model={tmp_path}", f"--data_dir={tmp_path / 'no_dataset'}", "--protocol=regdb"):
            "missing directory; expected the RegDB root",
    }
    for args, message in cases.items():
        result = run_cli(*args, out)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.json").exists()
