#!/bin/bash
# GPU/CPU Fallback Router -- the runbook's router (gpu-cpu-fallback-routing.md, steps 2 and 3),
# kept as written there so that the benchmark compares gpurouter against what it replaces.
# Only the runbook's inputs come from the environment (run.sh sets them), and "<extract from $@>"
# is filled in as "the last argument, if any" (gpurouter's `input = "last"`).
#
#   WORKLOAD_BINARY=/bin/true bash_router.sh [ARGS... INPUT]

WORKLOAD_BINARY=${WORKLOAD_BINARY:?set WORKLOAD_BINARY}
PROBE_TOOL=${PROBE_TOOL:-ffprobe}
THRESHOLD_VALUE=${THRESHOLD_VALUE:-3600}
MAX_GPU_JOBS=${MAX_GPU_JOBS:-1}
MAX_CPU_JOBS=${MAX_CPU_JOBS:-1}
GPU_ARGS=${GPU_ARGS-"--device cuda --compute_type float16"}
CPU_ARGS=${CPU_ARGS-"--device cpu --compute_type int8"}

# ──── Step 2: probe ────
probe_workload() {
    local INPUT="$1"
    local METRIC=0

    if [[ -n "$INPUT" && -f "$INPUT" ]]; then
        # Example: audio/video duration via ffprobe
        METRIC=$($PROBE_TOOL -v quiet -show_entries format=duration \
            -of csv=p=0 "$INPUT" 2>/dev/null | cut -d. -f1)
        METRIC=${METRIC:-0}
    fi

    echo "$METRIC"
}

# ──── Step 3: router ────
THRESHOLD=$THRESHOLD_VALUE
LOGFILE="${ROUTER_LOGFILE:-/tmp/workload-router.log}"
GPU_LOCK="${ROUTER_GPU_LOCK:-/tmp/gpu-workload.lock}"
CPU_LOCK="${ROUTER_CPU_LOCK:-/tmp/cpu-workload.lock}"

# ──── Probe ────
INPUT=""
if (( $# > 0 )); then
    INPUT="${!#}"
fi
METRIC=$(probe_workload "$INPUT")

# ──── Route ────
if (( METRIC < THRESHOLD )); then
    MODE="GPU"
    DEVICE_ARGS="$GPU_ARGS"
    LOCK_FILE="$GPU_LOCK"
    MAX_CONCURRENT=$MAX_GPU_JOBS
else
    MODE="CPU"
    DEVICE_ARGS="$CPU_ARGS"
    LOCK_FILE="$CPU_LOCK"
    MAX_CONCURRENT=$MAX_CPU_JOBS
fi

# ──── Concurrency control ────
if (( MAX_CONCURRENT == 1 )); then
    # Single-job lock: flock with fail-fast
    exec 9>"$LOCK_FILE"
    if ! flock --nonblock 9; then
        echo "[ROUTER] $(date) mode=${MODE}-BLOCKED metric=${METRIC} (slot full, exiting)" >> "$LOGFILE"
        exit 1  # Caller should retry later
    fi
fi

# ──── Log and execute ────
echo "[ROUTER] $(date) mode=$MODE metric=${METRIC} args: $@" >> "$LOGFILE"

exec $WORKLOAD_BINARY "$@" $DEVICE_ARGS
