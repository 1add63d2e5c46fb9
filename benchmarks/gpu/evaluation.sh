#!/usr/bin/env bash
# Issue-3 evaluation on a lent GPU machine: cross-validation under both protocols, the shortcut
# probe, and the combined-data model, run in parallel with the JAX backend.
#
# The lent machine has no Keras and no ../shared: run benchmarks/gpu/fetch_wheels.sh and
# benchmarks/gpu/compact_data.py first (here), then, with the device tool, from the repo root:
#   bash benchmarks/gpu/evaluation.sh        (carry .whl and .gpudata)
# Results land in $OUT/evaluation.tar.gz (every cv.json / cv.md / metrics.json / report / figure,
# and the combined model) and $OUT/evaluation.log. Each job has its own log inside the archive.
set -uo pipefail
OUT=${OUT:-/tmp/out}
LIMIT=${LIMIT:-330}  # seconds for all jobs together; what finished by then comes back
EPOCHS=${EPOCHS:-30}
FOLDS=${FOLDS:-5}
mkdir -p "$OUT"
if ! python3 -c "import keras" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=${KERAS_BACKEND:-jax}
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 COVIDXRAY_CACHE=/tmp/cxcache
DATA=${DATA:-.gpudata}
D=$DATA/darkcovidnet
I=$DATA/ieee8023
R=/tmp/results
mkdir -p $R
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/evaluation.log"; }
log "python $(python3 -V 2>&1); keras $(python3 -c 'import keras; print(keras.__version__, keras.backend.backend())')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >>"$OUT/evaluation.log" 2>&1
cx() { python3 -m covidxray "$@"; }
job() {  # name, then a command line; its output goes to $R/name.log
  local name=$1; shift
  [[ $name =~ ${ONLY:-.} ]] || return 0  # ONLY=regex runs some jobs (a dry run on the CPU, say)
  ( "$@" >"$R/$name.log" 2>&1; echo "exit $?" >>"$R/$name.log"; log "$name done: $(tail -n 4 $R/$name.log | tr '\n' ' ')" ) &
}
job cv-binary-image cx cv --data $D --task binary --group-by none --folds $FOLDS --epochs $EPOCHS --out $R/cv-binary-image
job cv-three-image cx cv --data $D --task three-class --group-by none --folds $FOLDS --epochs $EPOCHS --out $R/cv-three-image
job cv-binary-patient cx cv --data $D --task binary --folds $FOLDS --epochs $EPOCHS --out $R/cv-binary-patient
job cv-three-patient cx cv --data $D --task three-class --folds $FOLDS --epochs $EPOCHS --out $R/cv-three-patient
job probe-binary cx probe --data $D --task binary --epochs $EPOCHS --out $R/probe-binary
job probe-three cx probe --data $D --task three-class --epochs $EPOCHS --out $R/probe-three
job combined cx train --data $D --data $I --task three-class --epochs $EPOCHS --target-sensitivity 0.95 --out $R/combined
external() {  # a DarkCovidNet model on ieee8023's images it never saw: other hospitals, and pneumonia / normal from
  # the same source as the COVID images
  cx train --data $D --task "$1" --epochs $EPOCHS --out $R/darkcovidnet-$1 &&
    cx evaluate --run $R/darkcovidnet-$1 --data $I --out $R/darkcovidnet-$1/external-ieee8023.json
}
job darkcovidnet-three external three-class
job darkcovidnet-binary external binary
log "started $(jobs -p | wc -l) jobs"
end=$((SECONDS + LIMIT))
while [ -n "$(jobs -pr)" ] && [ $SECONDS -lt $end ]; do sleep 5; done
[ -n "$(jobs -pr)" ] && log "time limit: stopping $(jobs -pr | wc -l) unfinished jobs" && pkill -f "python3 -m covidxray"
sleep 2
for run in combined darkcovidnet-three-class; do [ -f $R/$run/model.keras ] && cp $R/$run/model.keras "$OUT/$run.keras"; done
(cd $R && tar czf "$OUT/evaluation.tar.gz" --exclude='model.keras' .)
log "archive $(du -h "$OUT/evaluation.tar.gz" | cut -f1)"
