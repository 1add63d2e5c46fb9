#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu/run.sh needs on the lent GPU machine into .whl/
# (ignored by git). That machine has Python 3.12 with JAX, PyTorch, numpy, pandas, scikit-learn,
# Pillow, matplotlib, tqdm, h5py, absl-py, ml-dtypes, rich and packaging, but no Keras and no
# internet: Keras and the two of its requirements missing there (namex, optree) travel as wheels.
# Run once, here, in the repository root that the device tool sends (the lead's checkout):
#     bash benchmarks/gpu/fetch_wheels.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-path info/exclude)"
git check-ignore -q .whl/x.whl || echo /.whl/ >> "$exclude"
rm -rf .whl && mkdir -p .whl
# One version of each (two stop the install there). Keras as tested here; optree is compiled.
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
ls -l .whl
du -sh .whl
