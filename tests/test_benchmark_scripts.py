"""The benchmark scripts run (they are scripts, not timed tests: these only check that they work)."""

import importlib.util
import json
import sys
from pathlib import Path

import keras
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


def test_input_pipeline_ceiling_trains_the_null_model_through_fit_arrays():
    result = load("input_pipeline").measure(size=16, batch_size=4, steps_per_execution=1, steps=3, epochs=1)
    assert result["steps"] == 3 and result["ms_per_step"] > 0
    assert result["images_per_second"] == pytest.approx(3 * 4 / (result["ms_per_step"] * 3 / 1000))
    if keras.backend.backend() == "jax":
        assert result["jit_compile"]  # the ceiling is meant for JAX on a GPU: it must be compiled
