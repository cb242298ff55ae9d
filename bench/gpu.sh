#!/usr/bin/env bash
# The whole GPU run of issue 19 as one command for the device tool (docs/benchmarks.md, "GPU"): the cuda tests,
# our trainer's images/s at batch 100, 512 and 2048 (bf16, eager and torch.compile) with GPU utilisation and the
# profiler's top ops, MultiVae's JMVAE on the same networks at batch 100 and 2048, and the serving ceiling and
# `jmvae serve` over HTTP at 1 and 32 clients on both paths (CUDA fp32, CUDA bf16, CPU). Writes
# bench/results/gpu-<kind>.json (and a copy into $OUT when the device tool set it), logs into $OUT too.
#
#   bash bench/gpu_wheels.sh                       # here, once: .whl/ for what the device's Python lacks
#   bash bench/gpu.sh                              # on the device (carry .whl); about 7 minutes on an H200
#   PYTHON=.venv/bin/python bash bench/gpu.sh --small   # anywhere, minutes on a CPU: tiny networks and data
#
# Each step has a time limit, so that one slow step costs its own results only: the steps' limits sum to 550 s.
set -uo pipefail
cd "$(dirname "$0")/.."
small=0
[[ "${1:-}" == "--small" ]] && small=1
py=${PYTHON:-python3}
out=${OUT:-}
work=$(mktemp -d)
log() { echo "[gpu.sh $(date +%T) +${SECONDS}s] $*" | tee -a "$work/steps.log"; }

# What the device's Python lacks comes from .whl/; jmvae is this checkout, linked as its installed layout.
if ! "$py" -c "import fastapi" 2>/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$py" -c "import jmvae.model" 2>/dev/null; then
    mkdir -p /tmp/gpu-site/jmvae
    for package in model training service cli; do ln -sfn "$PWD/$package" "/tmp/gpu-site/jmvae/$package"; done
    export PYTHONPATH=/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
kind=$("$py" -c "from bench.gpu import kind; print(kind())") || exit 1
device=$([[ $kind == cpu ]] && echo cpu || echo cuda)
name="gpu-$kind$([[ $small == 1 ]] && echo -small)"
log "device $kind, python $("$py" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')"

if [[ $small == 1 ]]; then
    # A CPU takes minutes where the device takes seconds: the steps' limits are 5 times the device's.
    images=2048 seconds=1 ceiling=0.3 slack=5
    model=(--model-config '{"conv_channels": [8, 16, 16, 16], "dense_units": 64, "latent_dim": 8, "attribute_units": 16}')
else
    # Epochs of 32,768 faces: the data lives on the GPU and each step gathers its batch, so images/s does not
    # depend on how many there are, and two epochs per configuration fit the call.
    images=32768 seconds=4 ceiling=1.5 slack=1
    model=()
fi
multivae=(--multivae-batch-sizes "")
if "$py" -c "import multivae" 2>/dev/null; then
    multivae=(--multivae-batch-sizes 100,2048 --multivae-python "$(command -v "$py")")
elif [[ -x bench/.venv-multivae/bin/python ]]; then
    multivae=(--multivae-batch-sizes 100,2048)
else
    log "no MultiVae (bash bench/setup_multivae.sh, or its wheels in .whl/): ours only"
fi
train=("$py" bench/train_speed.py --data synthetic --device "$device" --replicate "$images" --train-images "$images"
    --batch-sizes 100,512,2048 --epochs 2 --precision bf16 --bound-seconds 0 --val-examples 1 "${model[@]}")

log "cuda tests"
timeout $((130 * slack)) "$py" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py >"$work/tests.log" 2>&1
tail -5 "$work/tests.log"
log "training, eager"
timeout $((110 * slack)) "${train[@]}" "${multivae[@]}" --profile-steps 10 --json "$work/train-eager.json" >"$work/train-eager.log" 2>&1
tail -15 "$work/train-eager.log"
log "training, torch.compile"
timeout $((170 * slack)) "${train[@]}" --multivae-batch-sizes "" --compile --profile-steps 0 --json "$work/train-compiled.json" \
    >"$work/train-compiled.log" 2>&1
tail -8 "$work/train-compiled.log"
log "serving"
timeout $((140 * slack)) "$py" -m bench.gpu serve --out "$work/serving.json" --seconds "$seconds" --ceiling-seconds "$ceiling" \
    >"$work/serving.log" 2>&1
grep '^\[gpu\]' "$work/serving.log" | grep -v ceiling
log "collecting"
trains=()
for f in "$work"/train-eager.json "$work"/train-compiled.json; do [[ -f $f ]] && trains+=("$f"); done
GPU_SH_COMMAND="bash bench/gpu.sh $*" "$py" -m bench.gpu collect --tests "$work/tests.log" --train "${trains[@]}" \
    --serving "$work/serving.json" --out "bench/results/$name.json"
status=$?
if [[ -n $out ]]; then
    cp "bench/results/$name.json" "$out/" 2>/dev/null
    tar -czf "$out/gpu-logs.tar.gz" -C "$work" . 2>/dev/null
fi
log "done (status $status): bench/results/$name.json"
exit $status
