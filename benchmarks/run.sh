#!/usr/bin/env bash
# gpurouter's benchmark suite: one table, every figure as a ratio against a peer measured in
# the same run. What each row measures: benchmarks/README.md.
#
#   benchmarks/run.sh                            (about 2 minutes on a quiet 2-core box)
#   benchmarks/run.sh --only policies,gpu        (some groups only)
#
# Groups: core (rows a-e), policies (f), gpu (g, l, m), monitor (h), library (i), workloads (j); default: all.
# Needs (scripts/setup bench installs them, and run.sh calls it when one is missing): the venv at
# ../.venv with gpurouter installed, hyperfine, GNU parallel (sem),
# flock(1), ffmpeg and ffprobe, coreutils timeout (core needs them all, the other groups
# fewer). Everything it creates lives in one mktemp dir (HOME, XDG_CACHE_HOME, TMPDIR, the
# config, lock_dir, journal, media, device file), which is removed on exit together with any
# process the helpers started.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=$ROOT/.venv/bin/python
GR=$ROOT/.venv/bin/gpurouter

GROUPS_ALL="core policies gpu monitor library workloads"
usage() {
    echo "usage: benchmarks/run.sh [--only GROUP[,GROUP...]]  (groups: ${GROUPS_ALL// /, }; default: all)" >&2
}
ONLY=$GROUPS_ALL
while (( $# )); do
    case $1 in
        --only) (( $# >= 2 )) || { usage; exit 2; }; ONLY=${2//,/ }; shift 2 ;;
        --only=*) ONLY=${1#--only=}; ONLY=${ONLY//,/ }; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage; exit 2 ;;
    esac
done
[[ -n ${ONLY// /} ]] || { usage; exit 2; }
for group in $ONLY; do
    [[ " $GROUPS_ALL " == *" $group "* ]] || { echo "run.sh: unknown group: $group" >&2; usage; exit 2; }
done
want() { [[ " $ONLY " == *" $1 "* ]]; }

needs=(timeout date)
want core && needs+=(hyperfine flock sem parallel ffmpeg ffprobe)
want policies && needs+=(flock)
want gpu && needs+=(hyperfine)
want library && needs+=(hyperfine)
want workloads && needs+=(hyperfine ffmpeg)
missing=()
for tool in "${needs[@]}"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if (( ${#missing[@]} )) || [[ ! -x $PY || ! -x $GR ]]; then
    echo "run.sh: missing ${missing[*]:-the venv}: running scripts/setup bench (apt-get: hyperfine, parallel, ffmpeg)" >&2
    "$ROOT/scripts/setup" bench
    for tool in "${needs[@]}"; do
        command -v "$tool" >/dev/null || { echo "run.sh: $tool is still not on PATH after scripts/setup bench" >&2; exit 1; }
    done
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpurouter-bench.XXXXXX")
export BENCH_PIDFILE=$WORK/pids
: >"$BENCH_PIDFILE"

STEP_PID=
cleanup() {
    local code=$? pid
    trap - EXIT INT TERM HUP
    if [[ -n $STEP_PID ]] && kill -0 "$STEP_PID" 2>/dev/null; then
        kill -TERM "$STEP_PID" 2>/dev/null || true  # timeout(1) passes it on; the helpers clean up
        wait "$STEP_PID" 2>/dev/null || true
    fi
    # The helpers kill their own children; this catches what a killed helper left behind:
    # only the process groups whose leaders they recorded, and only if still ours.
    if [[ -s $BENCH_PIDFILE ]]; then
        while read -r pid; do
            [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || continue
            case "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" in
                *"$WORK"* | *"$HERE"*) kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true ;;
            esac
        done <"$BENCH_PIDFILE"
    fi
    rm -rf -- "$WORK"
    if (( code != 0 )); then
        echo "run.sh: stopped with exit status $code; its processes and temp dir are gone" >&2
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

step() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# Long steps run in the background and are waited for: bash runs a trap only once the
# foreground command is done, but interrupts `wait` at once (Ctrl-C, SIGTERM -> cleanup).
run_step() {
    "$@" &
    STEP_PID=$!
    wait "$STEP_PID"
    STEP_PID=
}

# ---------------------------------------------------------------- an isolated environment
mkdir -p "$WORK"/{home,tmp,media,results,bin,router}
export HOME=$WORK/home
export XDG_CACHE_HOME=$WORK/home/.cache
export XDG_CONFIG_HOME=$WORK/home/.config
export TMPDIR=$WORK/tmp
unset GPUROUTER_PROFILE GPUROUTER_ROUTE GPUROUTER_SKIP_LOCK GPUROUTER_HELD GPUROUTER_ROUTED \
    GPUROUTER_NVML_FILE CUDA_VISIBLE_DEVICES PYTHONPATH || true
# Bytecode: with PYTHONDONTWRITEBYTECODE set (common in dev shells and CI), a module edited since
# its .pyc was written is compiled afresh on every call, which is not what an installed
# gpurouter pays. Write and read bytecode in the temp dir instead (the warm-up runs fill it),
# leaving the source tree's __pycache__ alone. Unbuffered stdio is not the default either.
unset PYTHONDONTWRITEBYTECODE PYTHONUNBUFFERED PYTHONOPTIMIZE PYTHONWARNINGS PYTHONSTARTUP || true
export PYTHONPYCACHEPREFIX=$WORK/pycache
LOCK_DIR=$WORK/locks
RESULTS=$WORK/results

# gpurouter: profile "true" (picked by the command's basename) probes the duration; the
# bench-wait* profiles give the waiter benchmark pools of 1 and 2 slots. The others serve the
# groups beyond core:
#   bench-batch, bench-realtime         (f) priority classes on the gpu pool: the core hand-off's slot
#   bench-batch-slot, bench-batch-gate  (f) blocked batch waiters, pools wb and wg
#   bench-plain, bench-vram             (g) one threshold profile without / with vram_mib; called
#                                       without an input the probe has no metric and
#                                       fallback = "gpu" routes to the GPU
#   bench-monitor                       (h) monitor mode, 1 s sampling, a device-aware GPU route
#   bench-pass                          (j) input = "-i", no_input = "pass": `-version` passes untouched
write_config() {  # FILE PROBE_CACHE
    cat >"$1" <<EOF
lock_dir = "$LOCK_DIR"
journal = "$LOCK_DIR/journal.jsonl"
probe_cache = $2

[profiles.true]
probe = "duration"
threshold = "1h"

[profiles.true.gpu]
args = ["--device", "cuda", "--compute_type", "float16"]
slots = 1

[profiles.true.cpu]
args = ["--device", "cpu", "--compute_type", "int8"]
slots = 1

[profiles.bench-wait1.gpu]
pool = "w1"
slots = 1

[profiles.bench-wait2.gpu]
pool = "w2"
slots = 2

[profiles.bench-batch]
priority = "batch"

[profiles.bench-batch.gpu]
slots = 1

[profiles.bench-realtime]
priority = "realtime"

[profiles.bench-realtime.gpu]
slots = 1

[profiles.bench-batch-slot]
priority = "batch"

[profiles.bench-batch-slot.gpu]
pool = "wb"
slots = 1

[profiles.bench-batch-gate]
priority = "batch"

[profiles.bench-batch-gate.gpu]
pool = "wg"
slots = 1

[profiles.bench-plain]
probe = "duration"
threshold = "1h"
fallback = "gpu"

[profiles.bench-plain.gpu]
args = ["--device", "cuda", "--compute_type", "float16"]
slots = 1

[profiles.bench-plain.cpu]
args = ["--device", "cpu", "--compute_type", "int8"]
slots = 1

[profiles.bench-vram]
probe = "duration"
threshold = "1h"
fallback = "gpu"

[profiles.bench-vram.gpu]
args = ["--device", "cuda", "--compute_type", "float16"]
slots = 1
vram_mib = 3700

[profiles.bench-vram.cpu]
args = ["--device", "cpu", "--compute_type", "int8"]
slots = 1

[profiles.bench-pass]
probe = "duration"
threshold = "1h"
input = "-i"
no_input = "pass"

[profiles.bench-pass.gpu]
args = ["-c:v", "h264_nvenc"]
args_position = "before-last"
slots = 1

[profiles.bench-pass.cpu]
args = ["-c:v", "libx264"]
args_position = "before-last"
slots = 1

[profiles.bench-monitor]
monitor = true
monitor_interval = "1s"

[profiles.bench-monitor.gpu]
slots = 1
vram_mib = 3700
EOF
}
write_config "$WORK/config.toml" true
write_config "$WORK/config-nocache.toml" false
export GPUROUTER_CONFIG=$WORK/config.toml

# The device file (docs/gpus.md, "The device file: GPUROUTER_NVML_FILE"): four GPUs, one too full for 3700 MiB + the
# 256 MiB cushion, one busy but roomy, one idle, one small; GPUROUTER_NVML_FILE is set only
# for the rows that use it (g, h).
DEVICES=$WORK/devices.json
cat >"$DEVICES" <<'EOF'
{"devices": [
  {"index": 0, "uuid": "GPU-6f1c2a00-0000-0000-0000-000000000000", "name": "NVIDIA RTX A4000",
   "memory_total_mib": 16376, "memory_used_mib": 14100, "utilization_percent": 97,
   "temperature_c": 71, "power_w": 131.5, "processes": [{"pid": 4194301, "used_mib": 13900}]},
  {"index": 1, "uuid": "GPU-6f1c2a01-0000-0000-0000-000000000000", "name": "NVIDIA RTX A4000",
   "memory_total_mib": 16376, "memory_used_mib": 1200, "utilization_percent": 5,
   "temperature_c": 41, "power_w": 35.5, "processes": []},
  {"index": 2, "uuid": "GPU-6f1c2a02-0000-0000-0000-000000000000", "name": "NVIDIA RTX A5000",
   "memory_total_mib": 24564, "memory_used_mib": 8000, "utilization_percent": 40,
   "temperature_c": 60, "power_w": 110.0},
  {"index": 3, "uuid": "GPU-6f1c2a03-0000-0000-0000-000000000000", "name": "Tesla T4",
   "memory_total_mib": 15360, "memory_used_mib": 300, "utilization_percent": 0,
   "temperature_c": 35, "power_w": 20.0, "processes": []}
]}
EOF

# Sanity: gpurouter works here.
"$GR" run --route cpu -- /bin/true

if want core; then
    # The runbook's router, with the runbook's inputs for the same job.
    cp "$HERE/bash_router.sh" "$WORK/bin/bash_router.sh"
    chmod +x "$WORK/bin/bash_router.sh"
    ROUTER=$WORK/bin/bash_router.sh
    export WORKLOAD_BINARY=/bin/true PROBE_TOOL=ffprobe THRESHOLD_VALUE=3600 MAX_GPU_JOBS=1 MAX_CPU_JOBS=1
    export GPU_ARGS="--device cuda --compute_type float16" CPU_ARGS="--device cpu --compute_type int8"
    export ROUTER_LOGFILE=$WORK/router/workload-router.log
    export ROUTER_GPU_LOCK=$WORK/router/gpu-workload.lock ROUTER_CPU_LOCK=$WORK/router/cpu-workload.lock

    # Media: 2 s of sine as WAV (gpurouter reads its header) and as Ogg Vorbis (needs ffprobe).
    step "making media"
    WAV=$WORK/media/talk.wav
    OGG=$WORK/media/talk.ogg
    SINE=(-nostdin -hide_banner -loglevel error -f lavfi -i sine=frequency=440:duration=2)
    ffmpeg "${SINE[@]}" -c:a pcm_s16le "$WAV"
    ffmpeg "${SINE[@]}" -c:a libvorbis "$OGG" 2>/dev/null ||
        ffmpeg "${SINE[@]}" -c:a vorbis -strict -2 -ac 2 "$OGG"
fi

# Sanity: gpurouter probes as the rows assume; the bash router routes to GPU.
expect_via() {  # VIA FILE [CONFIG]: `gpurouter route` must say it measured FILE via VIA
    local decision
    decision=$(GPUROUTER_CONFIG=${3:-$GPUROUTER_CONFIG} "$GR" route --json -- /bin/true "$2")
    if [[ ! $decision =~ \"via\":\ *\"$1\" ]]; then
        echo "run.sh: expected gpurouter to probe $2 via $1, it decided: $decision" >&2
        exit 1
    fi
}
if want core; then
    expect_via native:wav "$WAV"
    "$ROUTER" "$WAV"
    if ! grep -q 'mode=GPU metric=2 ' "$ROUTER_LOGFILE"; then
        echo "run.sh: the bash router misrouted:" >&2
        cat "$ROUTER_LOGFILE" >&2
        exit 1
    fi
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# hyperfine --shell=none splits a command line into words itself (POSIX quoting): quote paths.
GRq=$(printf %q "$GR") PYq=$(printf %q "$PY")

# hyperfine runs all runs of one command, then all of the next: a burst of load from other
# work on the box would hit one side only. So each figure is ROUNDS short hyperfine runs with
# the command order flipped every round; report.py pools the times of all rounds per command
# and takes the median.
bench() {  # NAME ROUNDS RUNS  NAME1 CMD1 NAME2 CMD2 [NAME3 CMD3]
    local name=$1 rounds=$2 runs=$3 round
    shift 3
    local -a forward=() backward=()
    while (( $# )); do
        forward+=(--command-name "$1" "$2")
        backward=(--command-name "$1" "$2" "${backward[@]}")
        shift 2
    done
    for (( round = 0; round < rounds; round++ )); do
        local -a order=("${forward[@]}")
        if (( round % 2 )); then order=("${backward[@]}"); fi
        run_step timeout -k 5 120 hyperfine --shell=none --style none --warmup 3 --runs "$runs" \
            --export-json "$RESULTS/$name.$round.json" "${order[@]}" \
            2> >(grep -v -e '^ *$' -e 'Statistical outliers' -e 'first benchmarking run' >&2)
    done
}

MEMO_WARM=n/a
if want core; then
    ROUTERq=$(printf %q "$ROUTER") WAVq=$(printf %q "$WAV") OGGq=$(printf %q "$OGG")

    # ------------------------------------------------------------ (a) start-up overhead
    step "(a) start-up overhead (hyperfine, 5 x 40 runs each)"
    bench a 5 40 \
        gpurouter "$GRq run --route cpu -- /bin/true" \
        python "$PYq -c pass" \
        "bash router" "$ROUTERq"
    MEMO_WARM=no  # one memo file per config path: $XDG_CACHE_HOME/gpurouter/config-CRC.memo
    for memo in "$XDG_CACHE_HOME"/gpurouter/config*.memo; do
        if [[ -s $memo ]]; then MEMO_WARM=yes; fi
    done

    # ------------------------------------------------------------ (b) end to end with a probe
    step "(b) end to end, WAV (hyperfine, 5 x 16 runs each)"
    bench b_wav 5 16 gpurouter "$GRq run -- /bin/true $WAVq" "bash router" "$ROUTERq $WAVq"

    step "(b) end to end, OGG first call, probe_cache = false (hyperfine, 5 x 16 runs each)"
    GPUROUTER_CONFIG=$WORK/config-nocache.toml bench b_ogg_first 5 16 \
        gpurouter "$GRq run -- /bin/true $OGGq" "bash router" "$ROUTERq $OGGq"
    expect_via ffprobe "$OGG" "$WORK/config-nocache.toml"

    step "(b) end to end, OGG cached retry (hyperfine, 5 x 16 runs each)"
    "$GR" run -- /bin/true "$OGG"  # fills the probe cache
    expect_via cache "$OGG"
    bench b_ogg_cached 5 16 gpurouter "$GRq run -- /bin/true $OGGq" "bash router" "$ROUTERq $OGGq"
fi

# ---------------------------------------------------------------- (c, f) blocking hand-off
if want core || want policies; then
    tools=gpurouter n_sem=0
    want core && tools+=,flock,sem n_sem=20
    want policies && tools+=,gpurouter-batch,gpurouter-realtime
    step "(c, f) blocking hand-off: ${tools//,/, }"
    # The job under each waiter prints its start time: a static C `stamp` (its start-up is one
    # execve, measured with `stamp --exec-self`), else date(1) (start-up measured by posix_spawn).
    # Either way that start-up is subtracted.
    JOB="date +%s%N"
    if command -v cc >/dev/null; then
        cc -O2 -static -o "$WORK/bin/stamp" "$HERE/stamp.c" 2>/dev/null ||
            cc -O2 -o "$WORK/bin/stamp" "$HERE/stamp.c" 2>/dev/null || true
        if [[ -x $WORK/bin/stamp && $("$WORK/bin/stamp") =~ ^[0-9]{19}$ ]]; then
            JOB=$WORK/bin/stamp
        fi
    fi
    run_step timeout -k 5 300 "$PY" "$HERE/handoff.py" --work "$WORK" --gpurouter "$GR" \
        --lock-dir "$LOCK_DIR" --out "$RESULTS/handoff.json" --job "$JOB" --n 150 --n-sem "$n_sem" \
        --sem-hold 1.0 --tools "$tools"

    # ------------------------------------------------------------ (d, e, f) blocked waiters
    waiters=
    want core && waiters+=,gpurouter-1,gpurouter-2,flock,sem
    want policies && waiters+=,batch-slot,batch-gate,flock
    step "(d, e, f) CPU and RSS of blocked waiters"
    run_step timeout -k 5 60 "$PY" "$HERE/waiters.py" --work "$WORK" --gpurouter "$GR" \
        --lock-dir "$LOCK_DIR" --out "$RESULTS/waiters.json" --seconds 10 --waiters "${waiters#,}"
fi

# ---------------------------------------------------------------- (g) NVML-aware decision
if want gpu; then
    export GPUROUTER_NVML_FILE=$DEVICES
    decision=$("$GR" route --json --profile bench-vram -- /bin/true)
    if [[ ! $decision =~ \"route\":\ *\"gpu\" || ! $decision =~ \"vram_mib\":\ *3700 ]]; then
        echo "run.sh: expected bench-vram to be a device-aware GPU route, it decided: $decision" >&2
        exit 1
    fi
    # The aware run must place the job on a device; the plain one must not.
    "$GR" run --profile bench-vram -- /bin/sh -c '[ -n "${CUDA_VISIBLE_DEVICES-}" ]' ||
        { echo "run.sh: bench-vram did not set CUDA_VISIBLE_DEVICES" >&2; exit 1; }
    "$GR" run --profile bench-plain -- /bin/sh -c '[ -z "${CUDA_VISIBLE_DEVICES-}" ]' ||
        { echo "run.sh: bench-plain set CUDA_VISIBLE_DEVICES" >&2; exit 1; }
    step "(g) NVML-aware decision (device file) vs plain threshold (hyperfine, 5 x 30 runs each)"
    bench g 5 30 \
        plain "$GRq run --profile bench-plain -- /bin/true" \
        vram "$GRq run --profile bench-vram -- /bin/true"
    step "(g) what the aware decision imports (python -X importtime, 7 runs each)"
    run_step timeout -k 5 60 "$PY" "$HERE/gpu_imports.py" --python "$PY" --gpurouter "$GR" \
        --out "$RESULTS/gpu_imports.json" --runs 7 \
        --base "--profile bench-plain" --aware "--profile bench-vram" -- /bin/true
    unset GPUROUTER_NVML_FILE
    # ------------------------------------------------------------ (l) claims judged as jobs arrive
    step "(l) device-mode decision with a claim held: 0.5 s apart vs back to back (12 + 6 x 6 runs each)"
    run_step timeout -k 5 180 "$PY" "$HERE/claims_spaced.py" --runs 12 --burst 6 --pause-s 0.5 \
        --out "$RESULTS/claims_spaced.json" >/dev/null
    # ------------------------------------------------------------ (m) a resident's evidence
    step "(m) a resident's evidence per eviction decision vs a plain VRAM decision's reads (300 rounds)"
    run_step timeout -k 5 120 "$PY" "$HERE/evidence_cost.py" --n 300 --out "$RESULTS/evidence_cost.json"
fi

# ---------------------------------------------------------------- (i) library
if want library; then
    step "(i) library: import gpurouter (hyperfine, 5 x 30 runs each)"
    bench lib 5 30 \
        "import gpurouter" "$PYq -c 'import gpurouter'" \
        python "$PYq -c pass" \
        gpurouter "$GRq run --route cpu -- /bin/true"
    step "(i) library: decide + slot round trips in one process (200)"
    run_step timeout -k 5 60 "$PY" "$HERE/lib_roundtrip.py" --out "$RESULTS/lib_roundtrip.json" --n 200 \
        --warmup 20 --profile true --route cpu -- /bin/true
fi

# ---------------------------------------------------------------- (j) no_input = "pass"
if want workloads; then
    PASS_WAV=$WORK/media/pass.wav
    ffmpeg -nostdin -hide_banner -loglevel error -f lavfi -i sine=frequency=440:duration=2 -c:a pcm_s16le "$PASS_WAV"
    PASS_WAVq=$(printf %q "$PASS_WAV")
    decision=$("$GR" route --json --profile bench-pass -- /bin/true -version)
    if [[ ! $decision =~ \"action\":\ *\"pass\" ]]; then
        echo "run.sh: expected bench-pass to pass -version untouched, it decided: $decision" >&2
        exit 1
    fi
    step "(j) no_input = pass: '-version' untouched vs a probed, slotted run (hyperfine, 5 x 30 runs each)"
    bench j 5 30 \
        pass "$GRq run --profile bench-pass -- /bin/true -version" \
        run "$GRq run --profile bench-pass -- /bin/true -i $PASS_WAVq out.mp4"
fi

# ---------------------------------------------------------------- (h) monitor mode
if want monitor; then
    step "(h) monitor mode: CPU of a monitored 'sleep 10' (1 s sampling, device file)"
    run_step timeout -k 5 60 "$PY" "$HERE/monitor_cpu.py" --work "$WORK" --gpurouter "$GR" \
        --lock-dir "$LOCK_DIR" --devices "$DEVICES" --journal "$LOCK_DIR/journal.jsonl" \
        --out "$RESULTS/monitor.json" --seconds 10 --interval 1 --profile bench-monitor
fi

# ---------------------------------------------------------------- the table
V_PARALLEL=n/a V_FLOCK=n/a V_HYPERFINE=n/a
if command -v hyperfine >/dev/null; then V_HYPERFINE=$(hyperfine --version); fi
if command -v parallel >/dev/null; then V_PARALLEL=$(parallel --version | head -n1) || true; fi
if command -v flock >/dev/null; then V_FLOCK=$(flock --version); fi
LOAD_BEFORE=$LOAD_BEFORE MEMO_WARM=$MEMO_WARM GROUPS_RUN=$ONLY \
    V_HYPERFINE=$V_HYPERFINE V_PARALLEL=$V_PARALLEL V_FLOCK=$V_FLOCK "$PY" - "$RESULTS/facts.json" <<'EOF'
import json, os, platform, sys
json.dump({
    "nproc": os.cpu_count(),
    "load_before": os.environ["LOAD_BEFORE"],
    "load_after": " ".join(open("/proc/loadavg").read().split()[:3]),
    "python": "Python " + platform.python_version(),
    "hyperfine": os.environ["V_HYPERFINE"],
    "parallel": os.environ["V_PARALLEL"],
    "flock": os.environ["V_FLOCK"],
    "memo_warm": os.environ["MEMO_WARM"],
    "groups": os.environ["GROUPS_RUN"].split(),
}, open(sys.argv[1], "w"))
EOF
step "done"
"$PY" "$HERE/report.py" "$RESULTS"
