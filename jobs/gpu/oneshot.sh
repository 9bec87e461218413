#!/usr/bin/env bash
# One-shot check of distrec's GPU path on a lent GPU machine (device kind nvidia-h200), in ONE
# device call of at most 8 minutes. First, here: `make gpu-pack` (fills .gpu_pack/). Then the
# device tool call, exactly:
#
#   run(command="bash jobs/gpu/oneshot.sh", carry=[".gpu_pack"], timeout_s=480)
#
# Everything it measures lands in ONE file, $OUT/gpu_oneshot.md, written stage by stage, so a
# call cut off at its limit still brings back every finished stage. Stages, each under its
# own `timeout` (capped so the later stages keep their share of the ONESHOT_BUDGET_S budget,
# 420 s by default; reports and clean-ups between stages take the rest of the 480 s call), each
# run whatever the one before did (a failed unpack skips only the Ray/DeepSpeed stages):
#   unpack      .gpu_pack/*.tar.xz -> /tmp/site (PYTHONPATH), /tmp/site-pins, /tmp/distrec-gpu/home
#   env         versions (python, torch/CUDA/NCCL, GPU, transformers, peft, deepspeed, ray, faiss)
#   ray_init    distrec's own init_ray (local cluster with the dashboard) and the GPU Ray sees
#   fused_adam  DeepSpeed's FusedAdam JIT build (nvcc, sm_90), which the GPU strategy uses; when it
#               fails, the train stages run with jobs/gpu/adamw_fallback (torch AdamW) and say so
#   lora_ctr    distrec train jobs/gpu/lora_ctr_1b.yaml   (LoRA CTR, 1B random-init Llama, ZeRO-3, bf16, NCCL)
#   cflora_cft  distrec train jobs/gpu/cflora_cft_1b.yaml (CFLoRA + CFT generative, beam search, faiss grounding)
#   gpu_step_7b python jobs/bench/gpu_step.py on the 7B shape (single GPU, no Ray/DeepSpeed)
#
# Other modes (no GPU needed; the test suite runs both):
#   --print-stages  one line per `distrec train` stage: CONFIG<TAB>OVERRIDES..., then the gpu_step line
#   --cpu-dry-run   unpack the pack into a temporary folder and check its listing (deepspeed/,
#                   ray/_raylet*.so, faiss/, no ray/jars, the data and model folder), print the plan
# Environment: GPU_PACK (default .gpu_pack), ONESHOT_BUDGET_S (420), ONESHOT_STEPS (30), OUT,
# ONESHOT_RAY_STOP (1: `ray stop --force` after each train stage; set 0 on a machine shared with other Ray users).
set -u
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 1
PACK=${GPU_PACK:-$REPO/.gpu_pack}
BUDGET_S=${ONESHOT_BUDGET_S:-420}
STEPS=${ONESHOT_STEPS:-30}
ROOT=/tmp/distrec-gpu            # the jobs/gpu/*.yaml name this folder (model, runs)
MODE=${1:-run}

TRAIN_STAGES=(
  "lora_ctr jobs/gpu/lora_ctr_1b.yaml"
  "cflora_cft jobs/gpu/cflora_cft_1b.yaml"
)
TRAIN_OVERRIDES=("train.max_steps=$STEPS" "ray.storage_path=$ROOT/runs")
GPU_STEP_ARGS=(--shape 7b --dtype bf16 --device cuda --adapter cflora --objective cft --compare-sft
               --attn sdpa --checkpointing on --steps 5 --warmup 2)

case "$MODE" in
  --print-stages)
    for s in "${TRAIN_STAGES[@]}"; do
      set -- $s
      printf '%s\t%s\n' "$2" "${TRAIN_OVERRIDES[*]}"
    done
    printf 'gpu_step\t%s\n' "${GPU_STEP_ARGS[*]}"
    exit 0 ;;
  --cpu-dry-run)
    tmp=$(mktemp -d -t distrec-oneshot-dry.XXXXXX) || exit 1
    trap 'rm -rf "$tmp"' EXIT
    python3 jobs/gpu/pack.py unpack --pack "$PACK" --site "$tmp/site" --pins "$tmp/site-pins" \
      --home "$tmp/home" --check || { echo "oneshot: dry run: the pack fails its checks" >&2; exit 1; }
    echo "oneshot: dry run: pack unpacks and holds what the stages need; the plan (budget ${BUDGET_S} s):"
    for s in "${TRAIN_STAGES[@]}"; do set -- $s; echo "  $1: python3 -m distrec train --config $2 ${TRAIN_OVERRIDES[*]}"; done
    echo "  gpu_step_7b: python3 jobs/bench/gpu_step.py ${GPU_STEP_ARGS[*]} --append \$OUT/gpu_oneshot.md"
    exit 0 ;;
  run) ;;
  *) echo "usage: $0 [--print-stages|--cpu-dry-run]" >&2; exit 2 ;;
esac

# ---------------------------------------------------------------------------------- the GPU run
START=$(date +%s)
DEADLINE=$(( START + BUDGET_S ))
OUT=${OUT:-$REPO/runs/gpu-oneshot}
mkdir -p "$OUT" "$ROOT/logs"
REPORT=$OUT/gpu_oneshot.md
LOGS=$ROOT/logs
SUMMARY=()
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 \
  DISTREC_HOME=$ROOT/home TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 TORCH_EXTENSIONS_DIR=$ROOT/torch_extensions \
  TOKENIZERS_PARALLELISM=false RAY_memory_monitor_refresh_ms=0
export PYTHONPATH=/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}

{
  echo "# distrec GPU one-shot ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  echo "- command: \`bash jobs/gpu/oneshot.sh\` (budget ${BUDGET_S} s, ${STEPS} optimiser steps per train stage)"
  echo "- host: $(uname -m), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "- nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
  echo "- pack: $(cat "$PACK/MANIFEST.json" 2>/dev/null | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m.get("created"), m.get("pack_bytes"), "bytes")' 2>&1)"
  echo
} >"$REPORT"

# stage NAME CAP RESERVE COMMAND...: run COMMAND under `timeout` (CAP seconds at most, fewer when
# the budget less RESERVE for the stages after it is shorter), log it, append its section.
# RESERVE is in seconds of the default 420 s budget, scaled with ONESHOT_BUDGET_S.
stage() {
  local name=$1 cap=$2 reserve=$(( $3 * BUDGET_S / 420 )); shift 3
  local left=$(( DEADLINE - $(date +%s) - reserve ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 20 )); then
    SUMMARY+=("| $name | SKIPPED (budget) | 0 | $limit |")
    printf '## %s: SKIPPED (only %s s of the budget left)\n\n' "$name" "$left" >>"$REPORT"
    return 99
  fi
  local log=$LOGS/$name.log t0 t1 rc status tail_n=40
  t0=$(date +%s.%N)
  timeout --kill-after=15 "$limit" "$@" >"$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  local secs
  secs=$(python3 -c "print(round($t1 - $t0, 1))")
  case $rc in
    0) status=PASS ;;
    124|137) status="TIMEOUT (${limit} s)"; tail_n=80 ;;
    *) status="FAIL (exit $rc)"; tail_n=80 ;;
  esac
  SUMMARY+=("| $name | $status | $secs | $limit |")
  {
    printf '## %s: %s in %s s (limit %s s)\n\n' "$name" "$status" "$secs" "$limit"
    printf '`%s`\n\n' "$(printf '%s ' "$@" | tr '\n' ' ' | cut -c1-300)"
    printf '<details><summary>last %s log lines</summary>\n\n```text\n' "$tail_n"
    tail -n "$tail_n" "$log" | cut -c1-400
    printf '```\n</details>\n\n'
  } >>"$REPORT"
  return $rc
}

ray_stop() {  # end the local Ray cluster a train stage started (a timed-out driver leaves it)
  [ "${ONESHOT_RAY_STOP:-1}" = 1 ] || return 0  # 0: a shared machine (ray stop ends every Ray there)
  timeout 20 python3 -c 'import sys; from ray.scripts.scripts import main; sys.argv = ["ray", "stop", "--force"]; main()' \
    >>"$LOGS/ray_stop.log" 2>&1 || true
}

clear_locks() {  # a build killed mid-way leaves torch's extension lock: the next load would wait on it forever
  find "$TORCH_EXTENSIONS_DIR" -name lock -type f -delete 2>/dev/null || true
}

pack_ok=1
stage unpack 90 330 python3 jobs/gpu/pack.py unpack --pack "$PACK" --site /tmp/site --pins /tmp/site-pins \
  --home "$ROOT/home" --check || pack_ok=0

# transformers/peft at the repository's pins go first only where they import on this image
if PYTHONPATH=/tmp/site-pins:$PYTHONPATH timeout 60 python3 -c 'import transformers, peft, transformers.integrations' \
     >"$LOGS/pins.log" 2>&1; then
  export PYTHONPATH=/tmp/site-pins:$PYTHONPATH
  echo "- transformers/peft: the pack's pins (/tmp/site-pins)" >>"$REPORT"
else
  { echo "- transformers/peft: the image's own (the pins did not import:"; tail -n 3 "$LOGS/pins.log"; echo ")"; } >>"$REPORT"
fi
echo >>"$REPORT"

stage env 60 320 python3 jobs/gpu/report.py env

if (( pack_ok )); then
  stage ray_init 60 300 python3 -c '
import time
t = time.perf_counter()
import ray
from distrec.config import RayConfig
from distrec.train.launcher import init_ray
init_ray(RayConfig(num_workers=1, use_gpu=True, cpus_per_worker=8))
print("ray.init:", round(time.perf_counter() - t, 1), "s; resources:", ray.cluster_resources())
ray.shutdown()'
  ray_stop
  fallback=""
  stage fused_adam 150 270 python3 -c '
import time, torch
t = time.perf_counter()
from deepspeed.ops.op_builder import FusedAdamBuilder
FusedAdamBuilder().load()
from deepspeed.ops.adam import FusedAdam
p = torch.nn.Parameter(torch.randn(1024, device="cuda"))
opt = FusedAdam([p], lr=1e-3); p.grad = torch.randn_like(p); opt.step(); torch.cuda.synchronize()
print(f"fused_adam: built/loaded and stepped in {time.perf_counter() - t:.1f} s")' || {
    fallback=_adamw_fallback
    export PYTHONPATH=$REPO/jobs/gpu/adamw_fallback:$PYTHONPATH
    printf '**FusedAdam failed: the train stages below run with torch AdamW (jobs/gpu/adamw_fallback).**\n\n' >>"$REPORT"
  }
  clear_locks
  reserves=(175 80)
  i=0
  for s in "${TRAIN_STAGES[@]}"; do
    set -- $s
    name=$1$fallback config=$2
    run_name=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['ray']['run_name'])" "$config")
    rm -rf "${ROOT:?}/runs/$run_name"
    stage "$name" 180 "${reserves[$i]}" python3 -m distrec train --config "$config" "${TRAIN_OVERRIDES[@]}"
    timeout 30 python3 jobs/gpu/report.py run "$ROOT/runs/$run_name/distrec" "$name" >>"$REPORT" 2>&1
    ray_stop
    clear_locks
    i=$(( i + 1 ))
  done
else
  for s in ray_init fused_adam "${TRAIN_STAGES[@]}"; do
    set -- $s
    SUMMARY+=("| $1 | SKIPPED (pack failed) | 0 | 0 |")
  done
fi

printf '## gpu_step_7b (jobs/bench/gpu_step.py appends its own section below)\n\n' >>"$REPORT"
stage gpu_step_7b 150 5 python3 jobs/bench/gpu_step.py "${GPU_STEP_ARGS[@]}" --append "$REPORT"

{
  echo "## Summary ($(( $(date +%s) - START )) s of ${BUDGET_S} s)"
  echo
  echo "| stage | status | seconds | limit s |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${SUMMARY[@]}"
  echo
  echo "GPU memory in use at the end: $(nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader 2>/dev/null | head -1) (per-stage peaks: the figures above)"
} >>"$REPORT"
cat "$REPORT" | tail -n 20
exit 0
