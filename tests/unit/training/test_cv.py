"""covidxray.training.cv, through the library: folds trained and pooled (the command line: tests/e2e/test_cli_cv.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from covidxray.config import TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.training.cv import CV_JSON, FOLD_PREDICTIONS, _mean_sd, cross_validate
from helpers import make_dataset


def test_two_folds_test_every_image_once(tiny_model, fast_bootstrap, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=8, classes=("covid", "normal"))
    config = TrainConfig.for_command("cv", data=str(data), task="binary", model=tiny_model, epochs=1, batch_size=8,
                                     seed=2, augment=False)
    result = cross_validate(config, tmp_path / "cv", 2, verbose=0, progress=False)
    assert result["protocol"] == {"folds": 2, "group_by": "patient", "seed": 2, "images": 16, "patients": 8}
    tested = pd.concat([pd.read_csv(tmp_path / "cv" / f"fold-{k}" / FOLD_PREDICTIONS) for k in (1, 2)])
    assert len(tested) == 16 and tested["path"].is_unique  # every image tested once
    # the pooled metrics are those of the folds' own test predictions, pooled
    assert result["pooled"]["n"] == 16 and np.sum(result["pooled"]["confusion_matrix"]) == 16
    per_fold = [f["accuracy"] * f["images"] for f in result["per_fold"]]
    assert result["pooled"]["accuracy"] == pytest.approx(sum(per_fold) / 16)
    assert json.loads((tmp_path / "cv" / CV_JSON).read_text())["per_fold"] == result["per_fold"]
    with pytest.raises(CovidXrayError, match="already holds a finished cross-validation"):
        cross_validate(config, tmp_path / "cv", 2, verbose=0)


def test_bad_folds_fail_before_anything_is_written(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6, classes=("covid", "normal"))  # 3 patients per class
    with pytest.raises(CovidXrayError, match="class 'covid' has 3 patients, fewer than --folds 5"):
        cross_validate(TrainConfig(data=str(data), task="binary", image_size=32), tmp_path / "o", 5)
    assert not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(CovidXrayError, match="is a file, not a folder"):
        cross_validate(TrainConfig(data=str(data), task="binary", image_size=32), tmp_path / "file", 2)


def test_mean_and_sd_over_the_folds_that_have_the_metric():
    folds = [{"auc": 0.8}, {"auc": None}, {"auc": 0.6}, {"auc": 0.7}]
    mean, sd = _mean_sd(folds, "auc")
    assert mean == pytest.approx(0.7) and sd == pytest.approx(0.1)  # sample sd (ddof=1) of 0.8, 0.6, 0.7
    assert _mean_sd([{"auc": 0.9}], "auc") == (0.9, 0.0)
    assert _mean_sd([{"auc": None}], "auc") == (None, None)
