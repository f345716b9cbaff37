#!/usr/bin/env bash
# The GPU benchmark suite: one run on one GPU, under 8 minutes; writes
# benchmarks/results/gpu_<date>.json and .md (commit both).
#
#   bash benchmarks/gpu_suite.sh            # on the GPU machine
#   bash benchmarks/gpu_suite.sh --dry-run  # anywhere: every command line parsed, the first one
#                                           # run for one step on the tiny SAM3 (CPU)
#
# Real-size SAM3 (random weights: the same cost) at 1008 px, bf16. Each command has its own
# timeout and the suite stops starting new ones after BUDGET_S seconds, so that it ends in time.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PWD}/src:${PWD}/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
BUDGET_S=${BUDGET_S:-420}
STAMP=$(date -u +%Y%m%dT%H%M%S)
mkdir -p benchmarks/results
JSON=benchmarks/results/gpu_${STAMP}.json
[[ $DRY_RUN == 1 ]] && JSON=$(mktemp -d)/dry_run.json
START=$(date +%s)

COMMON="--model sam3-size --resolution 1008 --precision bf16 --steps 5 --json $JSON"
RUNS=(
  "--preset balanced --batch_size 1 --prompts_per_image 1 --compare --flops"
  "--preset balanced --batch_size 1 --prompts_per_image 4 --flops"
  "--preset balanced --batch_size 1 --prompts_per_image 16"
  "--preset balanced --batch_size 1 --prompts_per_image 1 --gradient_checkpointing"
  "--preset balanced --batch_size 1 --prompts_per_image 4 --gradient_checkpointing"
  "--preset balanced --batch_size 2 --prompts_per_image 4"
  "--preset balanced --batch_size 2 --prompts_per_image 4 --gradient_checkpointing"
  "--preset minimal --batch_size 1 --prompts_per_image 4"
  "--preset maximum --batch_size 1 --prompts_per_image 4 --gradient_checkpointing"
  "--preset balanced --batch_size 1 --prompts_per_image 16 --gradient_checkpointing"
)

for i in "${!RUNS[@]}"; do
  args="$COMMON ${RUNS[$i]}"
  if [[ $DRY_RUN == 1 ]]; then
    python benchmarks/train_step.py $args --parse_only || exit 1
    continue
  fi
  elapsed=$(( $(date +%s) - START ))
  if (( elapsed > BUDGET_S )); then
    echo "budget: ${elapsed}s spent, skipping: $args"
    continue
  fi
  echo "== $args"
  timeout 120 python benchmarks/train_step.py $args || echo "FAILED ($?): $args"
done

# Not yet in the suite: SAM2.1-large (task not on this branch), adapter vs merged inference.
python benchmarks/train_step.py --model sam2.1-large-size

if [[ $DRY_RUN == 1 ]]; then
  python benchmarks/train_step.py --model tiny --batch_size 1 --prompts_per_image 2 --steps 1 \
    --compare --flops --json "$JSON" || exit 1
fi
python benchmarks/train_step.py --markdown "$JSON" | tee "${JSON%.json}.md"
echo "wrote $JSON and ${JSON%.json}.md in $(( $(date +%s) - START )) s"
