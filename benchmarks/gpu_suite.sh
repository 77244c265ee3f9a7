#!/usr/bin/env bash
# Every GPU figure the issues ask for, from one prepared script.
#
#   make gpu-wheels                              # here: .whl/ = rescompile + what the GPU image lacks
#   bash benchmarks/gpu_suite.sh [--budget S] [STEP ...]   # there: CUDA torch, jax, flax, torchvision
#   bash benchmarks/gpu_suite.sh --smoke         # every step, tiny, on a CPU: checks the script
#
# Steps run in this order (the default is all of them), most important first:
#   env          nvidia-smi and versions
#   r50-torch    `rescompile train` ResNet-50 @224, synthetic, bf16 + channels_last + compiled
#                (issue 5: >= 5,000 images/s on one H100)
#   handwritten  emitted vs torchvision ResNet-50, fwd+bwd, bf16 + channels_last (issue 3)
#   flax-torch   jitted flax vs torch training steps, bf16, ResNet-50 and ResNet-56 (issue 4)
#   cifar20-64k  the whole paper-cifar schedule of ResNet-20, 64k steps of 128, augmentation on
#                the device (issue 5: under 3 minutes)
#   r50-flax     as r50-torch with the flax backend (issue 5)
#   r20          CIFAR ResNet-20 throughput through the harness, both backends (issue 5)
#   torchvision  emitted vs torchvision on the GPU, TF32 off: strict load, outputs (issue 3)
# Each step has its own time limit, clipped to what is left of --budget (default 540 s), so a
# slow step cannot starve the rest and the whole run ends inside one 10-minute device call; a step
# with under 30 s left is skipped; a training run stopped at its limit still reports the images/s
# it logged. On one H100 the first five steps should fit the default budget (estimated, never
# run); a second call takes the rest: `bash benchmarks/gpu_suite.sh --budget 240 r50-flax r20
# torchvision`. Results go to $OUT (default benchmarks/gpu-results/), at most 6 files: suite.log
# (everything printed), train.jsonl (one `rescompile train` summary a line),
# cifar20-64k-metrics.jsonl, handwritten.txt, flax_vs_torch.json, torchvision.json.
# With --smoke the limits are hang checks, not a plan: ten times each step's limit and budget, since
# a CPU that other work keeps busy can take minutes to compile and run even the tiny steps.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
BUDGET=
STEPS=()
while (($#)); do
    case $1 in
        --smoke) SMOKE=1 ;;
        --budget) BUDGET=$2; shift ;;
        -h|--help) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) STEPS+=("$1") ;;
    esac
    shift
done
SCALE=$((SMOKE ? 10 : 1))
BUDGET=${BUDGET:-$((540 * SCALE))}
((${#STEPS[@]})) || STEPS=(env r50-torch handwritten flax-torch cifar20-64k r50-flax r20 torchvision)

OUT="${OUT:-benchmarks/gpu-results}"
RUNS="${RUNS:-$(mktemp -d)}"  # run directories (checkpoints, curves): not brought back
mkdir -p "$OUT"
exec > >(tee -a "$OUT/suite.log") 2>&1
export PYTHONUNBUFFERED=1
# rescompile must come from its installation (an editable one, or the wheel below): ./rescompile
# alone lacks rescompile.backends (backends/ is mapped there at install), so the working directory
# must not shadow it on sys.path
export PYTHONSAFEPATH=1

PY="${PYTHON:-python3}"
if [[ -d .whl ]] && ! "$PY" -c "import rescompile.backends.torch" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || {
        echo "the wheels in .whl/ do not install here: make gpu-wheels GPU_PY=$("$PY" -c \
'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")') builds them for this Python"
        exit 1
    }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

if ((SMOKE)); then
    DEV=cpu; SIZE=32; R50_BATCH=4; R50_STEPS=4; R20_BATCH=16; R20_STEPS=12; FULL=24; ITERS=2
    TRAIN_DEV=(--device cpu --no-compile --channels-last)  # CPU: inductor takes minutes, bf16 is slow
    FLAX_TORCH=(--device cpu --batch 2 --rounds 1 --imagenet-size 64)
else
    DEV=cuda; SIZE=224; R50_BATCH=256; R50_STEPS=300; R20_BATCH=128; R20_STEPS=2000; FULL=64000; ITERS=20
    TRAIN_DEV=()  # the GPU defaults: bf16, channels_last, compiled, data and augmentation on device
    FLAX_TORCH=(--device gpu --batch 256)
fi

START=$SECONDS
run_step() {  # run_step NAME LIMIT COMMAND...: a time limit, never stops the suite
    local name=$1 limit=$(($2 * SCALE)) left=$((BUDGET - (SECONDS - START)))
    shift 2
    ((limit > left)) && limit=$left
    if ((limit < 30)); then
        echo "=== $name: skipped, ${left}s of the budget left"
        return
    fi
    echo "=== $name (limit ${limit}s) $(date -u +%T)"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@"
    echo "=== $name: exit $? after $((SECONDS - t0)) s"
}

train() {  # train NAME LIMIT SPEC BACKEND DATA BATCH STEPS [extra args]: appends to train.jsonl
    local name=$1 limit=$2 spec=$3 backend=$4 data=$5 batch=$6 steps=$7
    shift 7
    run_step "$name" "$limit" "$PY" -m rescompile train "$spec" --backend "$backend" \
        --data "$data" --batch-size "$batch" --steps "$steps" --quiet --out "$RUNS/$name" \
        "${TRAIN_DEV[@]}" "$@"
    # the summary, or for a run stopped at its limit what its metrics hold (images/s per window)
    "$PY" - "$RUNS/$name" "$name" >> "$OUT/train.jsonl" <<'PYEOF' || echo "=== $name: no record"
import json, pathlib, sys
run, name = pathlib.Path(sys.argv[1]), sys.argv[2]
if (run / "summary.json").exists():
    s = json.loads((run / "summary.json").read_text())
else:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    s = {"status": "stopped", "train_records": [json.loads(x) for x in lines if '"train"' in x]}
print(json.dumps({"name": name, **s}))
PYEOF
}

# throughput runs: fast recipe, no evaluation or checkpoint before the end
FASTRUN=(--recipe fast --eval-every 1000000 --ckpt-every 1000000 --log-every 50)
for s in "${STEPS[@]}"; do
    case $s in
        env)
            run_step env 60 bash -c "set -o pipefail; nvidia-smi; $PY -c 'import sys, torch, jax, flax; \
print(sys.version); print(\"torch\", torch.__version__, torch.cuda.is_available()); \
print(\"jax\", jax.__version__, jax.devices()); print(\"flax\", flax.__version__)'" ;;
        r50-torch)
            train r50-torch 180 specs/torchvision/resnet50.yaml torch \
                "synthetic:${SIZE}x${SIZE}x3:1000" $R50_BATCH $R50_STEPS --set input.size=$SIZE \
                "${FASTRUN[@]}" ;;
        cifar20-64k)
            # lr 0.1, /10 at 32k and 48k, batch 128, augmentation; evaluation every 4k steps
            train cifar20-64k 240 specs/paper/cifar-resnet20.yaml torch synthetic 128 $FULL \
                --recipe paper-cifar --augment --eval-every 4000 --ckpt-every 16000 \
                --log-every 500
            cp "$RUNS/cifar20-64k/metrics.jsonl" "$OUT/cifar20-64k-metrics.jsonl" 2>/dev/null ;;
        handwritten)
            run_step handwritten 90 bash -c "set -o pipefail; $PY benchmarks/torch_vs_handwritten.py --device $DEV \
--batch $R50_BATCH --size $SIZE --iters $ITERS | tee $OUT/handwritten.txt" ;;
        flax-torch)
            run_step flax-torch 180 "$PY" benchmarks/flax_vs_torch.py "${FLAX_TORCH[@]}" \
                --json "$OUT/flax_vs_torch.json" ;;
        r50-flax)
            train r50-flax 150 specs/torchvision/resnet50.yaml flax \
                "synthetic:${SIZE}x${SIZE}x3:1000" $R50_BATCH $R50_STEPS --set input.size=$SIZE \
                "${FASTRUN[@]}" ;;
        r20)
            for b in torch flax; do
                train "r20-$b" 90 specs/paper/cifar-resnet20.yaml $b synthetic $R20_BATCH $R20_STEPS \
                    --augment "${FASTRUN[@]}"
            done ;;
        torchvision)
            run_step torchvision 60 "$PY" scripts/torchvision_fixture.py --device $DEV \
                --size $SIZE --only resnet50,resnext50_32x4d --out "$OUT/torchvision.json" ;;
        *) echo "unknown step $s" ;;
    esac
done
rm -rf "$RUNS"
echo "=== done after $((SECONDS - START)) s $(date -u +%T)"
