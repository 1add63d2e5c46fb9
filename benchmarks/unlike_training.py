"""How often the "unlike the training data" flag fires: on a run's own test split and on other datasets.

    python benchmarks/unlike_training.py --run runs/darkcovidnet-three-class \
        --data ../shared/data/ieee8023 --data ../shared/data/radiography-db --out unlike.json

The run's split is rebuilt from its config.json (as ``benchmarks/heat_in_lungs.py`` does; its test
size is checked against metrics.json). Familiarity is fitted here on the training images with
the threshold from one half of the validation images (seeded), so that the other half measures
how often the flag fires on unseen images like the training data ("in_source"); the test split
is the run's own (for a leave-one-source-out fold: the source held out). Each ``--data`` is
evaluated as ``covidxray evaluate`` does (images the run saw left out) and reports the share
flagged and the accuracy with and without them.

    python benchmarks/unlike_training.py --run runs/loso/fold-3   # fold 3 of cv --group-by source
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import numpy as np
from harness import write_results


def measure(run: str, datasets: list[str], cache_dir: str | None = None) -> dict:
    from covidxray.evaluation.evaluate import evaluate
    from covidxray.inference.familiarity import familiarity_summary, fit_familiarity
    from covidxray.inference.predictor import load_predictor
    from covidxray.rundir import METRICS, SPLIT, RunDir
    from covidxray.training.data import PreparedData, load_data, prepare_data

    predictor = load_predictor(run)
    config = replace(predictor.config, cache_dir=cache_dir) if cache_dir else predictor.config
    saved = RunDir(predictor.path)
    if saved.file(SPLIT).is_file():  # the run's own split (a cross-validation fold's too)
        loaded = load_data(config)
        split = dict(zip(*saved.read_split().loc[:, ["path", "split"]].to_numpy().T))
        missing = [p for p in loaded.table["path"] if p not in split]
        if missing:
            raise SystemExit(f"{run}: {len(missing)} images are not in its split.csv (first: {missing[0]}); "
                             "the data differ from the run's")
        table = loaded.table.assign(split=[split[p] for p in loaded.table["path"]])
        data = PreparedData(table, loaded.images, loaded.targets, loaded.classes, loaded.skipped)
    else:  # a preset keeps no split.csv: made again from its settings
        data = prepare_data(config)
    rows = data.mask("test")
    expected = json.loads(saved.file(METRICS).read_text())["test"]["n"]
    if int(rows.sum()) != expected:
        raise SystemExit(f"{run}: the test split holds {int(rows.sum())} images, metrics.json says {expected}; "
                         "the data differ from the run's")
    x_val, y_val = data.part("validation")
    halves = np.random.default_rng(0).permutation(len(x_val)) < len(x_val) // 2
    predictor.familiarity = fit_familiarity(predictor.model, data.part("train")[0], x_val[halves])

    def flagged(images, targets):
        _, predicted = predictor.predict(images)
        return familiarity_summary(predictor.unlike_training(images), predicted == targets)

    result = {"run": str(run), "threshold": predictor.familiarity.threshold,
              "in_source": flagged(x_val[~halves], y_val[~halves]), "own_test": flagged(*data.part("test")),
              "test_sources": sorted(set(data.table.loc[rows, "source"])), "datasets": {}}
    for dataset in datasets:
        metrics = evaluate(predictor, dataset, cache_dir=cache_dir)
        result["datasets"][dataset] = {**metrics["unlike_training"], "covid_auc": (metrics.get("covid") or {}).get("auc"),
                                       "left_out_seen": metrics["left_out_seen"]}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run folder or preset:NAME")
    parser.add_argument("--data", action="append", default=[], help="a dataset to check (repeat)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=None, help="write the result to this JSON file")
    args = parser.parse_args(argv)
    result = measure(args.run, args.data, args.cache_dir)
    write_results(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
