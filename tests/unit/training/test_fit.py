"""Speed options: mixed precision, steps per execution, and the speed benchmark's worker."""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest
from covidxray.train import build_model, fit_arrays

from covidxray.config import TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.models import create_model

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed.py"


def test_mixed_precision_model_computes_in_bfloat16_and_returns_float32():
    model = create_model("darkcovidnet", num_classes=3, image_size=32, dtype_policy="mixed_bfloat16")
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert model.get_layer("conv1").kernel.dtype == "float32"  # weights stay float32
    probabilities = model.predict(np.full((2, 32, 32, 1), 100, dtype="float32"), verbose=0)
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(axis=1), 1, atol=1e-2)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was
    assert create_model("compactnet", num_classes=3, image_size=32).get_layer("stem_conv").compute_dtype == "float32"


def test_mixed_precision_and_steps_per_execution_train():
    config = TrainConfig(data="unused", model="compactnet", image_size=32, epochs=2, batch_size=8,
                         mixed_precision="mixed_bfloat16",
                         steps_per_execution=1 if keras.backend.backend() == "torch" else 2).resolve()
    images = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 1), dtype=np.uint8)
    history = fit_arrays(build_model(config, len(images)), images, np.arange(32) % 3, epochs=2, batch_size=8)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize("change, option", [({"mixed_precision": "float8"}, "--mixed-precision"),
                                            ({"steps_per_execution": 0}, "--steps-per-execution")])
def test_bad_speed_options_are_clear_errors(change, option):
    with pytest.raises(CovidXrayError, match=option):
        TrainConfig(data="unused", **change).resolve()


def test_benchmark_worker_records_a_failing_configuration_and_goes_on():
    spec = importlib.util.spec_from_file_location("train_speed", BENCHMARK)
    train_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_speed)
    args = train_speed.parse_args(["--configs", "nosuchmodel:32/4/none/1", "compactnet:32/4/none/1",
                                   "--steps", "2", "--epochs", "1", "--latency-calls", "1",
                                   "--backends", keras.backend.backend()])
    _, jobs = train_speed.plan(args)
    failed, ok = train_speed.run_worker(jobs)
    assert not failed["ok"] and "nosuchmodel" in failed["error"]
    assert ok["ok"] and ok["train_images"] == 8 and ok["train_images_per_second"] > 0
    assert ok["predict_images_per_second"] > 0 and ok["latency_ms"] > 0 and ok["peak_rss_mib"] > 0
    rows = train_speed.summarise([{**ok, "reference": {"train_images_per_second": ok["train_images_per_second"] / 2}}],
                                 epoch_images=80)
    assert rows[0]["train_images_per_second_ratio"] == pytest.approx(2.0)
    assert rows[0]["epoch_seconds"] == pytest.approx(80 / ok["train_images_per_second"])
