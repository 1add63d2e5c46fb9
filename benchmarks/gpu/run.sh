#!/usr/bin/env bash
# covidxray's training speed on one GPU with the JAX backend, against the plain PyTorch eager
# reference (benchmarks/reference_darkcovidnet_torch.py, channels_last) timed in the same run.
#
# End to end with covidxray's input pipeline (covidxray.training.fit.build_model + fit_arrays, as
# `covidxray train` feeds data: uint8 arrays in host memory, reshuffled each epoch, augmentation
# inside the model, class weights): darkcovidnet @256 and compactnet @160, batch 32 and 128,
# mixed precision (mixed_bfloat16) on and off, and 8 steps per execution once. Synthetic images.
#
# On the lent machine (one H100 or H200, Python 3.12 with JAX and PyTorch, no Keras, no
# internet), from the repository root, after `bash benchmarks/gpu/fetch_wheels.sh` here:
#     device tool: run(command="bash benchmarks/gpu/run.sh", carry=[".whl"], timeout_s=300)
# It ends within about 240 s, writes $OUT/input_pipeline.{json,md} (the input pipeline's ceiling:
# benchmarks/input_pipeline.py), $OUT/train_speed.json, $OUT/train_speed.md and $OUT/log.txt,
# and prints the table last. A configuration that fails is recorded and the others go on.
# Each measurement records "jit_compile": it must be true on JAX (an uncompiled step runs op by
# op; that is what Keras's own random resampling layers caused before RandomAffine replaced them).
#
# Check it on a CPU first (tiny images, a minute or two):  QUICK=1 bash benchmarks/gpu/run.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax
QUICK=${QUICK:-0}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d /tmp/covidxray-gpu.XXXX)}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
cd "$(dirname "$0")/../.."

echo "== covidxray GPU benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), results in $OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null \
    || echo "nvidia-smi: not available"
if compgen -G ".whl/*.whl" > /dev/null; then
    if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "installing the wheels in .whl/ failed; going on with what is installed"
    fi
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
# Compiled XLA programs are reused across configurations with the same shapes and dtypes.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/covidxray-jax-cache}
"$PYTHON" - <<'PY' || echo "version check failed (see above); the benchmark records what fails"
import importlib
for name in ("numpy", "jax", "jaxlib", "torch", "keras", "optree", "covidxray"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as error:  # noqa: BLE001
        print(f"{name}: cannot import ({error})")
import jax, torch
print("jax devices:", jax.devices())
print("torch cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY

if [ "$QUICK" = 1 ]; then
    S1=64; S2=64; IMAGES=32; REF_DEVICE=cpu; BUDGET=100; LIMIT=200
    PIPELINE=(--sizes 64 --batch-sizes 8 --steps-per-execution 1 --steps 10 --epochs 1)
    CONFIGS=(darkcovidnet:$S1/8/mixed_bfloat16/1 darkcovidnet:$S1/8/none/1 darkcovidnet:$S1/8/mixed_bfloat16/4
             compactnet:$S2/16/none/1)
    BATCHES=(8 16)
else
    S1=256; S2=160; IMAGES=6400; REF_DEVICE=cuda; BUDGET=145; LIMIT=190
    PIPELINE=(--sizes 256 --batch-sizes 32 128 --steps-per-execution 1 8 --steps 100 --epochs 3)
    # Most wanted first: a configuration that cannot start within the budget is skipped.
    CONFIGS=(darkcovidnet:$S1/32/mixed_bfloat16/1 darkcovidnet:$S1/32/none/1 darkcovidnet:$S1/32/mixed_bfloat16/8
             darkcovidnet:$S1/128/mixed_bfloat16/1 darkcovidnet:$S1/128/none/1
             compactnet:$S2/32/mixed_bfloat16/1 compactnet:$S2/32/none/1
             compactnet:$S2/128/mixed_bfloat16/1 compactnet:$S2/128/none/1)
    BATCHES=(32 128)
fi

# First the input pipeline alone (a model that does almost no work): the most images/s it can feed
# on this host, to read the training figures against. At most 45 s.
timeout 45 "$PYTHON" benchmarks/input_pipeline.py --backends jax "${PIPELINE[@]}" \
    --out "$OUT/input_pipeline.json" --markdown "$OUT/input_pipeline.md" \
    || echo "input pipeline benchmark: failed or stopped at 45 s (status $?); going on"

"$PYTHON" benchmarks/train_speed.py --backends jax --configs "${CONFIGS[@]}" --batch-size "${BATCHES[@]}" \
    --images-per-step-epoch "$IMAGES" --epochs 2 --warmup-steps 10 --repeats 1 --no-predict --one-process \
    --reference-size "$S1" --reference-device "$REF_DEVICE" --time-budget "$BUDGET" --hard-limit "$LIMIT" \
    --out "$OUT/train_speed.json" --markdown "$OUT/train_speed.md"
status=$?
echo "== done in ${SECONDS} s (status $status); $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $status
