"""The benchmark scripts run (they are scripts, not timed tests: these only check that they work)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import make_dataset

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


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
    assert row["minutes"] > 0
    # each accuracy is a whole number of images right out of its split (the run's own split of the data)
    from covidxray.config import TrainConfig
    from covidxray.training.data import prepare_data

    sizes = prepare_data(TrainConfig(data=str(dataset), image_size=32, seed=0).resolve()).table["split"]
    for split, key in (("test", "test_accuracy"), ("validation", "val_accuracy")):
        n = int((sizes == split).sum())
        right = row[key] * n
        assert right == pytest.approx(round(right), abs=1e-6) and 0 <= round(right) <= n, (key, row[key], n)


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


def test_benchmark_worker_records_a_failing_configuration_and_goes_on():
    import keras

    train_speed = load("train_speed")
    args = train_speed.parse_args(["--configs", "nosuchmodel:32/4/none/1", "compactnet:32/4/none/1",
                                   "--steps", "2", "--epochs", "1", "--latency-calls", "1",
                                   "--backends", keras.backend.backend()])
    _, jobs = train_speed.plan(args)
    failed, ok = train_speed.run_worker(jobs)
    assert not failed["ok"] and "nosuchmodel" in failed["error"]
    assert ok["ok"] and ok["train_images"] == 8 and ok["train_images_per_second"] > 0
    assert ok["predict_images_per_second"] > 0 and ok["latency_ms"] > 0 and 0 < ok["import_rss_mib"] <= ok["peak_rss_mib"]
    rows = train_speed.summarise([{**ok, "reference": {"train_images_per_second": ok["train_images_per_second"] / 2}}],
                                 epoch_images=80)
    assert rows[0]["train_images_per_second_ratio"] == pytest.approx(2.0)
    assert rows[0]["epoch_seconds"] == pytest.approx(80 / ok["train_images_per_second"])


def test_decode_memory_measures_each_file_in_a_fresh_process(tmp_path):
    # small files (64 x 64) and the 88 Mpx PNG, which must be refused; no web page (it loads Keras)
    out, table = tmp_path / "memory.json", tmp_path / "memory.md"
    assert load("decode_memory").main(["--max-pixels", "4096", "--files", "png16", "dcm-rle16", "png16-over",
                                       "--web", "--out", str(out), "--markdown", str(table)]) == 0
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["png16"]["result"] == rows["dcm-rle16"]["result"] == "decoded"
    assert rows["png16-over"]["result"].startswith("refused: too large: 9,400 x 9,400 pixels")
    assert all(0 <= row["peak_mib"] - row["baseline_mib"] < 100 for row in rows.values())
    assert rows["png16 x7"]["result"] == "decoded" and rows["png16 x7"]["how"] == "decode_resized, 7 files, 4 threads"
    assert "| png16-over | 16-bit grayscale PNG | 9,400 x 9,400 |" in table.read_text()


def _untrained_run(dataset, tmp_path):
    """A run folder with config.json and an untrained model.keras; returns it and its split's table."""
    import keras

    from covidxray.config import Runtime, TrainConfig
    from covidxray.models import create_model
    from covidxray.training.data import prepare_data

    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(data=str(dataset), image_size=32).resolve()
    runtime = Runtime(cache_dir=str(tmp_path / "cache")).resolve(config)
    config.save(run / "config.json", runtime)
    create_model(config.model, num_classes=3, image_size=32, seed=0).save(run / "model.keras")
    keras.backend.clear_session()
    return run, prepare_data(config, runtime.cache_dir).table


def test_heat_in_lungs_rebuilds_the_runs_test_split(dataset, tmp_path):
    run, table = _untrained_run(dataset, tmp_path)
    test_images = int((table["split"] == "test").sum())
    (run / "metrics.json").write_text(json.dumps({"test": {"n": test_images}}))
    out = tmp_path / "heat.json"
    assert load("heat_in_lungs").main(["--run", str(run), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    heat = result["heat_in_lungs"]
    assert result["test_images"] == test_images == heat["images"] + heat["left_out"]
    (run / "metrics.json").write_text(json.dumps({"test": {"n": test_images + 1}}))  # not this run's data
    with pytest.raises(SystemExit, match="the rebuilt test split holds"):
        load("heat_in_lungs").main(["--run", str(run)])


def test_refit_familiarity_and_abstention_measure_the_flag_on_a_runs_split(dataset, tmp_path):
    from covidxray import rundir
    from covidxray.inference.familiarity import Familiarity

    run, table = _untrained_run(dataset, tmp_path)
    fold = tmp_path / "cv" / "fold-1"
    fold.parent.mkdir()
    run = run.rename(fold)
    rundir.write_csv(fold / "split.csv", table)
    (fold / "metrics.json").write_text(json.dumps({"test": {"n": 1}}))
    out = tmp_path / "refit.json"
    assert load("refit_familiarity").main([str(fold), "--out", str(out)]) == 0
    refit = json.loads(out.read_text())
    familiarity = Familiarity.load(fold)
    assert refit["threshold"] == familiarity.threshold and refit["min_probability"] == familiarity.min_probability
    assert refit["test"]["images"] == int((table["split"] == "test").sum())
    assert json.loads((fold / "metrics.json").read_text())["unlike_training"]["share"] == refit["share"] == 0.10
    results = tmp_path / "abstention"
    assert load("abstention").main([str(tmp_path / "cv"), "--out", str(results)]) == 0
    rows = json.loads((results / "abstention.json").read_text())
    assert {r["rule"] for r in rows} >= {"familiarity distance", "1 - top probability", "distance or low probability",
                                         "distance to the nearest class", "penultimate: 10th nearest training image"}
    assert "source detector: 1 - top probability" not in {r["rule"] for r in rows}  # one training source: no detector
    for row in rows:
        assert row["test_images"] == refit["test"]["images"] and 0 <= row["test_flagged"] <= 1
        if row["aurc"] is not None:
            assert 0 <= row["aurc_best_possible"] <= row["aurc"] + 1e-12
    assert "| synthetic (" in (results / "abstention.md").read_text()


def test_train_speed_plans_environments_and_compares_bfloat16_like_for_like():
    train_speed = load("train_speed")
    args = train_speed.parse_args(["--configs", "darkcovidnet:32/4/mixed_bfloat16/1", "--backends", "tensorflow",
                                   "--env", "", "TF_NUM_INTEROP_THREADS=1,ONEDNN_MAX_CPU_ISA=AVX512_CORE",
                                   "--reference-autocast", "none", "bfloat16"])
    references, jobs = train_speed.plan(args)
    assert [r.get("autocast") for r in references] == [None, "bfloat16"]
    assert [job["env"] for job in jobs] == [{}, {"TF_NUM_INTEROP_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}]
    assert train_speed.label(jobs[1]).endswith("mixed_bfloat16 TF_NUM_INTEROP_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX512_CORE")
    assert train_speed.label(references[1]).endswith("(cpu, autocast bfloat16)")
    measured = {"ok": True, "job": jobs[0], "train_images_per_second": 60.0,
                "reference": {"train_images_per_second": 30.0}, "reference_like": {"train_images_per_second": 50.0}}
    (row,) = train_speed.summarise([measured], epoch_images=80)
    assert row["train_images_per_second_ratio"] == pytest.approx(2.0)
    assert row["train_images_per_second_ratio_like"] == pytest.approx(1.2)
    assert "60.0 (2.00x) (1.20x autocast ref)" in train_speed.results_table([row], 80)


def test_the_reference_trains_under_bfloat16_autocast():
    reference = load("reference_darkcovidnet_torch")
    result = reference.measure(batch_size=2, steps=1, warmup=0, image_size=32, predict=False, autocast="bfloat16")
    assert result["autocast"] == "bfloat16" and result["train_images_per_second"] > 0


def test_lung_segmentation_speed_times_the_network_with_keras_and_onnx_runtime(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(images / f"{i}.png")
    out, table = tmp_path / "lungs.json", tmp_path / "lungs.md"
    assert load("lung_segmentation_speed").main(["--untrained", "32:4,8", "--images", str(images), "--count", "3",
                                                 "--repeats", "1", "--backends", "tensorflow",
                                                 "--out", str(out), "--markdown", str(table)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    network = row["network_per_second"]
    assert network["keras"] > 0 and network["onnxruntime"] > 0, network
    assert network["max_difference"] < 1e-4  # the same network
    assert f"{network['keras']} / {network['onnxruntime']}" in table.read_text()


def test_paired_auc_compares_two_settings_fold_by_fold_on_the_same_images(dataset, tmp_path):
    import pandas as pd

    from covidxray.config import TrainConfig
    from covidxray.data.sources import load_datasets

    table = load_datasets(str(dataset))
    covid = (table["label"] == "covid").to_numpy()
    rng = np.random.default_rng(0)
    noise = rng.random(len(table))

    def setting(name: str, sharpness: float) -> Path:
        """A cv folder: fold-1 tested every image, fold-2 only the normal ones (no COVID AUC)."""
        for fold, rows in (("fold-1", np.ones(len(table), bool)), ("fold-2", (table["label"] == "normal").to_numpy())):
            folder = tmp_path / name / fold
            folder.mkdir(parents=True)
            TrainConfig(data=str(dataset), image_size=32).resolve().save(folder / "config.json")
            p_covid = np.clip(noise + sharpness * covid, 0, None)[rows]
            p_covid = p_covid / (1 + p_covid)
            pd.DataFrame({"path": table["path"][rows], "p_covid": p_covid, "p_normal": (1 - p_covid) / 2,
                          "p_pneumonia": (1 - p_covid) / 2}).to_csv(folder / "test_predictions.csv", index=False)
        return tmp_path / name

    first, second, third = setting("weak", 0.2), setting("strong", 1.0), setting("weaker", 0.1)
    out, markdown = tmp_path / "paired.json", tmp_path / "paired.md"
    assert load("paired_auc").main(["--first", str(first), "--second", str(second), "--second", str(third),
                                    "--samples", "200", "--out", str(out), "--markdown", str(markdown)]) == 0
    settings = json.loads(out.read_text())["settings"]
    folds = settings[str(second)]["folds"]
    assert list(folds) == ["fold-1"]  # fold-2 holds no COVID image: skipped
    result = folds["fold-1"]
    assert result["images"] == len(table) and result["sources"] == ["synthetic"]
    assert result["second"] == 1.0 > result["first"] and result["interval"][0] > 0
    assert result["patients"] == len(table) // 2  # two images per patient, resampled together
    assert settings[str(third)]["folds"]["fold-1"]["difference"] < 0  # each setting against the first
    rows = markdown.read_text().splitlines()
    assert [row.split(" | ")[:2] for row in rows[2:]] == [["| weak", "fold-1"], ["| strong", "fold-1"],
                                                          ["| weaker", "fold-1"]]
    assert f"{result['second']:.3f} | - | {result['difference']:+.3f} [" in rows[3]  # no metrics.json: no accuracy
    fold = second / "fold-1" / "config.json"  # a fold of the removed --intensity and --lungs mask still reads
    fold.write_text(json.dumps({**json.loads(fold.read_text()), "intensity": "clahe", "lungs": "mask"}))
    assert load("paired_auc").main(["--first", str(first), "--second", str(second), "--samples", "200",
                                    "--out", str(out)]) == 0
    assert json.loads(out.read_text())["settings"][str(second)]["folds"]["fold-1"]["second"] == result["second"]
    (second / "fold-1" / "test_predictions.csv").write_text("path,p_covid,p_normal,p_pneumonia\n")
    with pytest.raises(SystemExit, match="tested other images"):
        load("paired_auc").main(["--first", str(first / "fold-1"), "--second", str(second / "fold-1")])


def test_fold_ensemble_averages_the_members_fold_by_fold(dataset, tmp_path):
    """Three members, each right on another third of the images: alone each ranks COVID badly, their
    mean ranks it perfectly; on a fold of normal films only, it counts the films called COVID-19."""
    import pandas as pd

    from covidxray.config import TrainConfig
    from covidxray.data.sources import load_datasets

    table = load_datasets(str(dataset))
    classes = ["covid", "normal", "pneumonia"]
    targets = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    normal = (table["label"] == "normal").to_numpy()
    members = []
    for k in range(3):
        right = np.arange(len(table)) % 3 == k
        probabilities = np.full((len(table), 3), 0.2)
        probabilities[np.arange(len(table)), targets] = np.where(right, 0.9, 0.2)
        probabilities[np.arange(len(table)), (targets + 2) % 3] = np.where(right, 0.05, 0.6)  # normal: covid
        for fold, rows in (("fold-1", np.ones(len(table), bool)), ("fold-2", normal)):
            folder = tmp_path / f"seed{k}" / fold
            folder.mkdir(parents=True)
            TrainConfig(data=str(dataset), image_size=32).resolve().save(folder / "config.json")
            pd.DataFrame({"path": table["path"][rows], **{f"p_{c}": probabilities[rows, i] for i, c in
                                                           enumerate(classes)}}).to_csv(folder / "test_predictions.csv",
                                                                                         index=False)
        members.append(tmp_path / f"seed{k}")
    out, markdown = tmp_path / "ensemble.json", tmp_path / "ensemble.md"
    args = [arg for member in members for arg in ("--member", str(member))]
    assert load("fold_ensemble").main([*args, "--samples", "100", "--out", str(out), "--markdown", str(markdown)]) == 0
    first, second = json.loads(out.read_text())["results"]
    assert first["fold"] == "fold-1" and first["images"] == len(table)
    assert first["ensemble_auc"] == 1.0 and max(first["auc"]) < 1.0
    assert first["ensemble_accuracy"] == 1.0 and first["accuracy"] == pytest.approx([1 / 3] * 3, abs=0.05)
    assert [d["difference"] for d in first["paired"]] == pytest.approx([1.0 - auc for auc in first["auc"]])
    assert all(d["interval"][0] > 0 for d in first["paired"])
    wrong_normal = [int(np.sum(normal & (np.arange(len(table)) % 3 != k))) for k in range(3)]
    assert second["called_covid"] == wrong_normal and second["ensemble_called_covid"] == 0 and "auc" not in second
    assert second["accuracy"] == pytest.approx([1 - w / normal.sum() for w in wrong_normal])
    assert f"called COVID-19: 0 ({', '.join(map(str, wrong_normal))})" in markdown.read_text()
    with pytest.raises(SystemExit, match="two or more --member"):
        load("fold_ensemble").main(["--member", str(members[0])])


def test_ensemble_doubt_scores_orderings_of_the_ensembles_mistakes(dataset, tmp_path):
    """Two models agree, unsure, on the images they get right and are sure of two different wrong
    classes on the rest: disagreement puts every mistake of their mean first, the mean's top
    probability (higher on the mistakes) last."""
    import pandas as pd

    from covidxray.config import TrainConfig
    from covidxray.data.sources import load_datasets

    table = load_datasets(str(dataset))
    classes = ["covid", "normal", "pneumonia"]
    targets = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    hard = np.arange(len(table)) % 4 == 0  # the mean of a confident right and a confident wrong: wrong
    runs = []
    for name, wrong_class in (("a", 1), ("b", 2)):
        folder = tmp_path / name / "fold-1"
        folder.mkdir(parents=True)
        TrainConfig(data=str(dataset), image_size=32).resolve().save(folder / "config.json")
        called = np.where(hard, (targets + wrong_class) % 3, targets)
        probabilities = np.repeat(np.where(hard, 0.1, 0.3)[:, None], 3, axis=1)
        probabilities[np.arange(len(table)), called] = np.where(hard, 0.8, 0.4)
        pd.DataFrame({"path": table["path"], **{f"p_{c}": probabilities[:, i] for i, c in enumerate(classes)}}
                     ).to_csv(folder / "test_predictions.csv", index=False)
        runs.append(tmp_path / name)
    out, markdown = tmp_path / "doubt.json", tmp_path / "doubt.md"
    assert load("ensemble_doubt").main(["--member", str(runs[0]), "--member", str(runs[1]), "--share", "0.25",
                                        "--out", str(out), "--markdown", str(markdown)]) == 0
    results = {r["doubt"]: r for r in json.loads(out.read_text())["results"]}
    assert len(results) == 3 and all(r["images"] == len(table) for r in results.values())
    disagree = results["the members disagree on the class (ties by the above)"]
    assert disagree["disagree"] == pytest.approx(hard.mean())
    assert disagree["mistakes_in_most_doubtful"] == 1.0 and disagree["aurc"] == pytest.approx(disagree["aurc_best"])
    assert results["one less the ensemble's top probability"]["mistakes_in_most_doubtful"] == 0.0
    assert "| synthetic (" in markdown.read_text()
    assert load("ensemble_doubt").main(["--member", str(runs[0]), "--member", str(runs[0]), "--member", str(runs[1]),
                                        "--share", "0.25", "--out", str(out), "--markdown", str(markdown)]) == 0
    three = {r["doubt"]: r for r in json.loads(out.read_text())["results"]}  # a, a and b: a's wrong call wins
    assert three["the members disagree on the class (ties by the above)"]["members_accuracy"] == [0.75, 0.75, 0.75]
    assert three["the members disagree on the class (ties by the above)"]["mistakes_in_most_doubtful"] == 1.0
    assert three["one less the ensemble's top probability"]["accuracy"] == pytest.approx(1 - hard.mean())


def test_cv_tta_scores_a_cross_validation_again_and_reproduces_it_with_one_view(tmp_path, tiny_model):
    import pandas as pd

    from covidxray.cli import main

    data = make_dataset(tmp_path / "data", per_class=12, classes=("covid", "normal"))
    cv = tmp_path / "cv"
    assert main(["--quiet", "cv", "--data", str(data), "--task", "binary", "--folds", "2", "--out", str(cv),
                 "--model", tiny_model, "--image-size", "32", "--epochs", "2", "--seed", "1"]) == 0
    finished = json.loads((cv / "cv.json").read_text())
    script = load("cv_tta")
    same = script.rescore(cv, 1, tmp_path / "one-view")
    assert [f["accuracy"] for f in same["per_fold"]] == [f["accuracy"] for f in finished["per_fold"]]
    assert same["pooled"]["accuracy"] == finished["pooled"]["accuracy"]
    assert same["pooled"]["intervals"]["accuracy"] == finished["pooled"]["intervals"]["accuracy"]  # same resamples
    assert same["pooled"]["loss"] == pytest.approx(finished["pooled"]["loss"], abs=1e-4)

    out = tmp_path / "four-views"
    assert script.main(["--cv", str(cv), "--tta", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tta"] == 4 and [f["fold"] for f in summary["per_fold"]] == [1, 2]
    assert summary["without_tta"]["pooled_accuracy"] == finished["pooled"]["accuracy"]
    assert "| 4 views |" in (out / "summary.md").read_text()
    before, after = (pd.read_csv(folder / "fold-1" / "test_predictions.csv") for folder in (cv, out))
    assert list(after["path"]) == list(before["path"])
    assert np.abs(after["p_covid"] - before["p_covid"]).max() > 1e-4  # the views were averaged
    assert load("paired_auc").main(["--first", str(cv), "--second", str(out), "--samples", "50",
                                    "--out", str(tmp_path / "paired.json")]) == 0  # the same shape as cv's folds
    with pytest.raises(SystemExit, match="not a finished cross-validation"):
        script.rescore(tmp_path / "data", 2, tmp_path / "nothing")


def test_a_paired_difference_is_sharper_than_two_intervals_side_by_side():
    """Two models that rank mostly the same images high: their shared errors cancel in the difference."""
    from covidxray.evaluation.metrics import bootstrap_intervals

    COVID = 2  # noqa: N806
    rng = np.random.default_rng(2)
    n = 300
    y = rng.integers(0, 3, n)
    covid = y == COVID
    shared = rng.normal(0, 1, n) + 1.2 * covid  # what both models see in an image
    first = np.full((n, 3), 0.1)
    second = np.full((n, 3), 0.1)
    first[:, COVID] = 1 / (1 + np.exp(-shared))
    second[:, COVID] = 1 / (1 + np.exp(-(shared + 0.3 * covid + 0.1 * rng.normal(0, 1, n))))
    groups = np.arange(n) // 2
    paired_auc_difference = load("paired_auc").paired_auc_difference
    result = paired_auc_difference(y, first, second, groups, COVID, samples=400)
    alone = [bootstrap_intervals(y, p, p.argmax(1), groups, COVID, samples=400)["auc"] for p in (first, second)]
    assert result["second"] > result["first"] and result["difference"] == pytest.approx(result["second"] - result["first"])
    low, high = result["interval"]
    assert 0 < low <= result["difference"] <= high and result["share_second_higher"] == 1.0
    assert alone[1][0] < alone[0][1]  # side by side, the two AUCs' intervals overlap
    assert result["patients"] == n // 2 and result["resamples"] == 400
    swapped = paired_auc_difference(y, second, first, groups, COVID, samples=400)
    assert swapped["interval"] == pytest.approx([-high, -low]) and swapped["share_second_higher"] == 0.0
    with pytest.raises(ValueError, match="COVID and non-COVID"):
        paired_auc_difference(np.full(n, COVID), first, second, groups, COVID)


def test_preset_probabilities_writes_and_compares_the_presets_outputs(tmp_path, capsys):
    from helpers import gray, shared_data_dir, write_png

    script = load("preset_probabilities")
    folder = tmp_path / "darkcovidnet"
    for i in range(4):
        write_png(folder / "covid" / f"{i}.png", gray(i, (40, 40)))
    assert script.sample(folder, 2) == [str(folder / "covid" / "0.png"), str(folder / "covid" / "2.png")]
    data = shared_data_dir()  # skips where ../shared/data is absent (fails on CI)
    first = tmp_path / "first.npz"
    assert script.main(["--data", str(data), "--per-dataset", "1", "--out", str(first)]) == 0
    assert script.main(["--data", str(data), "--per-dataset", "1", "--out", str(tmp_path / "again.npz"),
                        "--compare", str(first)]) == 0  # the same code gives the same numbers
    assert "largest difference 0.00e+00" in capsys.readouterr().out
    arrays = dict(np.load(first))
    arrays[next(iter(arrays))] = arrays[next(iter(arrays))] + 1e-3
    np.savez(tmp_path / "moved.npz", **arrays)
    assert script.main(["--data", str(data), "--per-dataset", "1", "--out", str(tmp_path / "third.npz"),
                        "--compare", str(tmp_path / "moved.npz")]) == 1


def test_tensorboard_cost_times_the_logs_of_one_run(dataset, tmp_path):
    from covidxray.training.callbacks import EpochTensorBoard

    pytest.importorskip("tensorboard")
    on_epoch_end = EpochTensorBoard.on_epoch_end
    result = load("tensorboard_cost").main(["--data", str(dataset), "--out", str(tmp_path / "run"), "--epochs", "2",
                                            "--image-size", "32"])
    assert result["epochs"] == 2 and set(result["bytes"]) == {"train", "validation", "test"}
    assert result["seconds"]["on_epoch_end"] > 0 and result["seconds"]["write_report_summaries"] > 0
    assert result["bytes"]["test"] > result["bytes"]["train"] > 0  # the images
    assert EpochTensorBoard.on_epoch_end is on_epoch_end  # the timing is undone


def test_onednn_profile_tables_the_kernels_of_the_measured_epochs_only(tmp_path):
    profile = load("onednn_profile")
    mark = profile.MARK
    lines = ["onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,src,,alg,mb2_ic1oc8,5.0",  # warm-up
             f"{mark} begin",
             "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,src,,alg,mb2_ic1oc8,2.0",
             "onednn_verbose,v1,primitive,create:cache_hit,cpu,convolution,jit:avx2,forward_training,src,,alg,mb2,9.0",
             "onednn_verbose,1796623293.1,v1,primitive,exec,cpu,batch_normalization,bnorm_jit,backward,data,,flags,mb2ic8,1.0",
             f"{mark} end 0.004",
             f"{mark} begin",
             "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,src,,alg,mb2_ic1oc8,4.0",
             f"{mark} end 0.006"]
    by_kind, by_shape, step_ms, epochs = profile.kernel_times(lines, steps=2)
    assert epochs == 2 and step_ms == pytest.approx(2.5)  # 10 ms over 4 steps
    assert by_kind == {("convolution", "forward_training"): pytest.approx(1.5), ("batch_normalization", "backward"): 0.25}
    assert by_shape[("convolution", "forward_training", "jit:avx2", "mb2_ic1oc8")] == pytest.approx(1.5)

    # a real run: the worker's kernels, timed by oneDNN, within a step that TensorFlow timed
    out, table = tmp_path / "profile.json", tmp_path / "profile.md"
    assert profile.main(["--model", "compactnet:32", "--batch-size", "4", "--steps", "2", "--epochs", "1",
                         "--out", str(out), "--markdown", str(table)]) == 0
    result = json.loads(out.read_text())
    assert result["epochs"] == 1 and result["step_ms"] > 0 and result["isa"] != "unknown"
    assert result["kernel_ms_per_step"]["convolution backward_weights"] > 0
    assert "| the training step (wall time) |" in table.read_text()


def test_adapt_batch_norm_predicts_a_folds_held_out_images_before_and_after(dataset, tmp_path):
    import pandas as pd

    from covidxray import rundir

    run, table = _untrained_run(dataset, tmp_path)
    (tmp_path / "cv").mkdir()
    fold = run.rename(tmp_path / "cv" / "fold-1")
    rundir.write_csv(fold / "split.csv", table)
    test = table[table["split"] == "test"]
    recorded = pd.DataFrame({"path": list(reversed(list(test["path"]))), "p_covid": 1.0, "p_normal": 0.0,
                             "p_pneumonia": 0.0})  # another order than the split's: the adapted rows follow it
    recorded.to_csv(fold / "test_predictions.csv", index=False)
    out = tmp_path / "adapted"
    assert load("adapt_batch_norm").main([str(tmp_path / "cv"), "--out", str(out)]) == 0
    result = json.loads((out / "adapt.json").read_text())["fold-1"]
    assert result["batch_norm_layers"] > 0
    assert result["before"]["images"] == result["after"]["images"] == len(test)
    adapted = pd.read_csv(out / "fold-1" / "test_predictions.csv")
    assert [Path(p).name for p in adapted["path"]] == [Path(p).name for p in recorded["path"]]
    assert np.allclose(adapted[["p_covid", "p_normal", "p_pneumonia"]].sum(axis=1), 1, atol=1e-5)
    assert (out / "fold-1" / "config.json").read_text() == (fold / "config.json").read_text()
    recorded.iloc[1:].to_csv(fold / "test_predictions.csv", index=False)  # not the images the split holds now
    with pytest.raises(SystemExit, match="not those of test_predictions.csv"):
        load("adapt_batch_norm").main([str(tmp_path / "cv"), "--out", str(tmp_path / "again")])
    assert load("adapt_batch_norm").main([str(tmp_path / "nothing"), "--out", str(out)]) == 2
