"""Probabilities of the shipped presets on a fixed sample of each shared dataset, to check that a
refactor changes no number.

    python benchmarks/preset_probabilities.py --out before.npz           # on the old code
    python benchmarks/preset_probabilities.py --out after.npz --compare before.npz

Per preset and dataset: the model's own probabilities and the calibrated ones of ``--per-dataset``
images (every k-th file of the dataset, sorted by path), with the Keras engine, and the ONNX
export's where ``--onnx`` is given. ``--compare`` prints the largest absolute difference per array
and exits 1 when one is above ``--tolerance``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DATASETS = ("darkcovidnet", "ieee8023", "radiography-db", "jsrt")
PRESETS = ("compactnet_darkcovidnet_ieee8023", "compactnet_darkcovidnet_ieee8023_radiographydb")


def sample(folder: Path, count: int) -> list[str]:
    files = sorted(str(p) for p in folder.rglob("*.png") if "mask" not in p.parts[-2].lower())
    step = max(1, len(files) // count)
    return files[::step][:count]


def probabilities(preset: str, paths: list[str]) -> dict[str, np.ndarray]:
    from covidxray.data.images import decode_resized
    from covidxray.inference.predictor import load_predictor

    predictor = load_predictor(f"preset:{preset}")
    decoded = [decode_resized(p, predictor.decode_side) for p in paths]
    inputs = predictor.prepare(np.stack([d[0] for d in decoded]), [d[1] for d in decoded])
    calibrated, _ = predictor.predict(inputs.images)
    return {"raw": predictor.predict_raw(inputs.images), "calibrated": calibrated}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="the folder holding the shared datasets")
    parser.add_argument("--per-dataset", type=int, default=50)
    parser.add_argument("--out", required=True, help="an .npz to write")
    parser.add_argument("--compare", help="an .npz written before, to compare with")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args(argv)
    arrays = {}
    for dataset in DATASETS:
        paths = sample(Path(args.data) / dataset, args.per_dataset)
        for preset in PRESETS:
            for kind, values in probabilities(preset, paths).items():
                arrays[f"{preset}/{dataset}/{kind}"] = values
    np.savez(args.out, **arrays)
    print(f"wrote {args.out}: {len(arrays)} arrays")
    if not args.compare:
        return 0
    before = np.load(args.compare)
    worst = 0.0
    for name, values in arrays.items():
        difference = float(np.abs(values - before[name]).max())
        worst = max(worst, difference)
        print(f"{name}: max |difference| {difference:.2e}")
    print(f"largest difference {worst:.2e} (tolerance {args.tolerance:g})")
    return int(worst > args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
