#!/usr/bin/env bash
# The checks a session with a lent GPU runs (one command, at most 570 s of limits on one H200):
#   1. scripts/gpu_smoke.py: the embedded pipeline on CUDA (fp16+GradScaler+compile tokenizer with a
#      SIGUSR1 preemption and resume, bf16 AR generators, bf16 sampling, CUDA I3D)
#   2. benchmarks/bench_tokenizer_step.py: the paper preset at batch 16, bf16 and fp16, prior vs no prior, MFU
#   3. benchmarks/bench_sampling.py: llama-abs-LP sampling in bf16 with CFG at batch 64, 1024 tokens, with the
#      compiled static-shape decode step (CUDA graphs), then the eager step on 256-token sequences
# First H200 session (2026-11-28): 1 timed out at 200 s inside the compiled tokenizer training, 2 took
# ~110 s, the eager sampler did not finish two 1024-token passes in 75 s (the compiled step did not exist yet).
# Usage: bash scripts/gpu_check.sh OUT_DIR   (logs and JSON results land in OUT_DIR)
# Without the package installed, `larp` is a shim over `python -m larp.cli` with src/ on PYTHONPATH.
set -u
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1 PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
if ! command -v larp >/dev/null; then
    mkdir -p /tmp/larp-bin
    printf '#!/bin/sh\nexec %s -m larp.cli "$@"\n' "$py" >/tmp/larp-bin/larp && chmod +x /tmp/larp-bin/larp
    export PATH=/tmp/larp-bin:$PATH
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$py -c "import torch, av; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'av', av.__version__)"

step() {  # step NAME TIMEOUT_S CMD...: run with a time limit, log to $out/NAME.log, show the tail
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "=== $name: rc $rc, $((SECONDS - t0)) s"
    grep -v -E 'it/s\]|s/it\]|/s\]' "$out/$name.log" | tail -n 40
}
step smoke 270 $py "$root/scripts/gpu_smoke.py" /tmp/larp-gpu-smoke
step bench_tokenizer 120 $py "$root/benchmarks/bench_tokenizer_step.py" --presets paper --device cuda \
    --amp bf16 fp16 --steps 10 --warmup 3 --out "$out/bench_tokenizer.json"
step bench_sampling_compiled 120 $py "$root/benchmarks/bench_sampling.py" --preset llama-abs-LP \
    --batch-sizes 64 --reference-batch-sizes --dtype bf16 --decode compiled --out "$out/bench_sampling.json"
step bench_sampling_eager 60 $py "$root/benchmarks/bench_sampling.py" --preset llama-abs-LP --seq-len 256 \
    --batch-sizes 64 --reference-batch-sizes --dtype bf16 --decode eager --out "$out/bench_sampling_eager.json"
