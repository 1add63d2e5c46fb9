"""The benchmark scripts run (they are scripts, not timed tests: these only check that they work)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their siblings
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_select_default_model_trains_and_scores_each_candidate(dataset, tmp_path):
    out = tmp_path / "selection.jsonl"
    load("select_default_model").main(["--data", str(dataset), "--candidates", "compactnet:32", "--epochs", "1",
                                       "--batch-size", "8", "--out", str(out)])
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["model"] == "compactnet" and row["image_size"] == 32 and row["epochs_run"] == 1
    assert 0 <= row["test_accuracy"] <= 1 and 0 <= row["val_accuracy"] <= 1 and row["minutes"] > 0


def test_input_pipeline_ceiling_runs_compiled_on_jax(tmp_path):
    # In a JAX process of its own, as on the GPU machine (benchmarks/gpu/run.sh).
    out, table = tmp_path / "pipeline.json", tmp_path / "pipeline.md"
    assert load("input_pipeline").main(["--backends", "jax", "--sizes", "16", "--batch-sizes", "4", "--steps", "3",
                                        "--epochs", "1", "--out", str(out), "--markdown", str(table)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    (row,) = result["rows"]
    assert result["backend"] == "jax" and row["batch_size"] == 4 and row["image_size"] == 16
    assert row["jit_compile"]  # an uncompiled step would measure Keras's op-by-op overhead instead
    assert row["images_per_second"] == pytest.approx(4 / (row["ms_per_step"] / 1000))
    assert "| jax | 16 | 4 | 1 | True |" in table.read_text()
