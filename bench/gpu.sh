#!/usr/bin/env bash
# Every CUDA check in one run (< 8 minutes on one GPU), then one table: the gpu-marked tests, the inference bench
# (server device auto = cuda) and the notebook's 5,000-step run (preset "small") on CUDA.
# Usage: bench/gpu.sh [PYTHON]   (default .venv/bin/python). Logs go to ${OUT:-/tmp}/gpu-bench/.
set -uo pipefail
PY=${1:-.venv/bin/python}
LOGS=${OUT:-/tmp}/gpu-bench
mkdir -p "$LOGS"
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device visible to $PY: nothing to run" >&2
  exit 2
fi
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')" | tee "$LOGS/device.txt"

declare -a NAMES RCS SECS SUMMARY
run() {  # run NAME LIMIT_SECONDS SUMMARY_REGEX CMD...: time one step, keep its log, remember a summary line
  local name=$1 limit=$2 pattern=$3; shift 3
  local start=$SECONDS
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  NAMES+=("$name"); RCS+=("$rc"); SECS+=("$((SECONDS - start))")
  SUMMARY+=("$(grep -E "$pattern" "$LOGS/$name.log" | tail -1 | cut -c1-100)")
}

# Budgets sum to 450 s: tests 120, inference bench 150, training 180 (a 10.7M model, 5,000 steps, bf16 autocast).
run gpu-tests 120 "passed|failed|error" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
run inference 150 "stream|Score|score" "$PY" -m bench.inference --quick
run train-5000 180 "val|small" "$PY" -m bench.train_quality --config small --steps 5000 --device cuda --no-reference

printf '\n%-12s %-5s %-6s %s\n' step rc secs summary
for i in "${!NAMES[@]}"; do
  printf '%-12s %-5s %-6s %s\n' "${NAMES[$i]}" "${RCS[$i]}" "${SECS[$i]}" "${SUMMARY[$i]}"
done
echo "logs: $LOGS (rc 124: ran past its limit)"
for rc in "${RCS[@]}"; do [ "$rc" -eq 0 ] || exit 1; done
