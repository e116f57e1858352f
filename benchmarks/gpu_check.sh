#!/usr/bin/env bash
# The GPU check (issue 6): everything this project claims about CUDA, measured in one run on one GPU.
#
#   1. benchmarks/train_step.py: a GoogLeNet + PLM training step at B = 120, 227 px, d = 512, N_rho = 100 under
#      32-true, 32-true + TF32, bf16-mixed and 16-mixed: images/s, peak memory, PLM's share of the step.
#   2. benchmarks/gpu_eval.py: the evaluation engine's torch path on CUDA at CUB / Cars / SOP sizes (SOP: 60,502 x 512
#      random clustered embeddings) vs a bare chunked top-k, and the same engine on the CPU (metrics must be identical).
#   3. benchmarks/similarity.py --device cuda: PLM similarity + loss cost as B, d and N_rho grow.
#   4. plm-fit on the embedded digits on the GPU with 32-true and bf16-mixed (the whole Lightning path on CUDA:
#      sharded embedding pass, evaluation on the device, checkpoints).
#
# Run from the repository root on a machine with CUDA, with the project installed (or its src/ on PYTHONPATH):
#     bash benchmarks/gpu_check.sh [OUTPUT_DIR]        # default OUTPUT_DIR: benchmarks/results; about 4 minutes
# Results: the JSON files below in OUTPUT_DIR and the log on stdout; docs/benchmarks.md records a run.
set -uo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: run one part; a failure is reported and the others still run
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S))"
    local t0=$SECONDS
    timeout "$limit" "$@" || { echo "=== $name FAILED (exit $?)"; status=1; }
    echo "=== $name took $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || status=1
python3 -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'lightning',
lightning.__version__, 'device', torch.cuda.get_device_name())" || exit 1

step train_step 240 python3 benchmarks/train_step.py --device cuda --output "$out/train-step-cuda.json"
step gpu_eval 180 python3 benchmarks/gpu_eval.py --output "$out/eval-cuda.json"
step similarity 180 python3 benchmarks/similarity.py --device cuda --googlenet-budget 20 \
    --output "$out/similarity-cuda.json"
for precision in 32-true bf16-mixed; do
    run_dir=$(mktemp -d)/digits-$precision
    step "plm-fit digits $precision" 150 python3 -m plm_lightning.cli.fit --config digits.yaml \
        trainer.accelerator=gpu trainer.precision=$precision trainer.enable_progress_bar=false \
        "run.dir=$run_dir"
    [ -f "$run_dir/metrics.json" ] && cp "$run_dir/metrics.json" "$out/fit-digits-$precision.json"
done
exit $status
