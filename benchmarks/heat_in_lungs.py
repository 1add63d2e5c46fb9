"""Heat inside the lungs on a run's (or a preset's) own test split, rebuilt from its config.json.

A run trained by this version of covidxray has ``heat_in_lungs`` in its metrics.json already;
this script measures it for older runs and for the shipped presets (which keep no split.csv):
the split is made again from the run's settings (same data, seed and grouping give the same
split; the script checks the test split's size against metrics.json) and the Grad-CAM heat of
the predicted class is summed inside the segmented lungs.

    python benchmarks/heat_in_lungs.py --run preset:compactnet_darkcovidnet_ieee8023 --out heat.json
"""

from __future__ import annotations

import argparse
import json
import sys

from harness import write_results


def measure(run: str, cache_dir: str | None = None, layer: str | None = None) -> dict:
    from covidxray.evaluation.attention import heat_in_lungs
    from covidxray.inference.predictor import load_predictor
    from covidxray.rundir import METRICS, RunDir
    from covidxray.training.data import prepare_data

    predictor = load_predictor(run)
    data = prepare_data(predictor.config, cache_dir)
    rows = data.mask("test")
    expected = json.loads(RunDir(predictor.path).file(METRICS).read_text())["test"]["n"]
    if int(rows.sum()) != expected:
        raise SystemExit(f"{run}: the rebuilt test split holds {int(rows.sum())} images, metrics.json says {expected}; "
                         "the data differ from the run's")
    images = data.images[rows]
    _, predicted = predictor.predict(images)
    quality = [q for q, k in zip(data.lung_quality, rows) if k]
    heat = heat_in_lungs(predictor.model, images, data.lungs[rows], quality, predicted, data.table[rows],
                         predictor.classes, layer=layer)
    return {"run": str(run), "layer": layer, "test_images": expected, "heat_in_lungs": heat}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run folder or preset:NAME")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--layer", default=None, help="the layer Grad-CAM explains (default: the last convolutional one)")
    parser.add_argument("--out", default=None, help="write the result to this JSON file")
    args = parser.parse_args(argv)
    result = measure(args.run, args.cache_dir, args.layer)
    write_results(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
