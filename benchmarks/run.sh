#!/usr/bin/env bash
# gpurouter's benchmark suite: one table, every figure as a ratio against a peer measured in
# the same run. What each row measures: benchmarks/README.md.
#
#   benchmarks/run.sh            (about 1.5 minutes on a quiet 2-core box)
#
# Needs: the venv at ../.venv with gpurouter installed, hyperfine, GNU parallel (sem),
# flock(1), ffmpeg and ffprobe, coreutils timeout. Everything it creates lives in one
# mktemp dir (HOME, XDG_CACHE_HOME, TMPDIR, the config, lock_dir, journal, media), which is
# removed on exit together with any process the helpers started.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=$ROOT/.venv/bin/python
GR=$ROOT/.venv/bin/gpurouter

for tool in hyperfine flock sem parallel ffmpeg ffprobe timeout date; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is not on PATH" >&2; exit 1; }
done
[[ -x $PY && -x $GR ]] || { echo "run.sh: no venv with gpurouter at $ROOT/.venv (run scripts/test first)" >&2; exit 1; }

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
unset GPUROUTER_PROFILE GPUROUTER_ROUTE GPUROUTER_SKIP_LOCK GPUROUTER_HELD GPUROUTER_NVML_FILE PYTHONPATH || true
# Bytecode: with PYTHONDONTWRITEBYTECODE set (common in dev shells and CI), a module edited since
# its .pyc was written is compiled afresh on every call, which is not what an installed
# gpurouter pays. Write and read bytecode in the temp dir instead (the warm-up runs fill it),
# leaving the source tree's __pycache__ alone. Unbuffered stdio is not the default either.
unset PYTHONDONTWRITEBYTECODE PYTHONUNBUFFERED PYTHONOPTIMIZE PYTHONWARNINGS PYTHONSTARTUP || true
export PYTHONPYCACHEPREFIX=$WORK/pycache
LOCK_DIR=$WORK/locks
RESULTS=$WORK/results

# gpurouter: profile "true" (picked by the command's basename) probes the duration; the
# bench-wait* profiles give the waiter benchmark pools of 1 and 2 slots.
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
EOF
}
write_config "$WORK/config.toml" true
write_config "$WORK/config-nocache.toml" false
export GPUROUTER_CONFIG=$WORK/config.toml

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

# Sanity: gpurouter works here and probes as the rows assume; the bash router routes to GPU.
expect_via() {  # VIA FILE [CONFIG]: `gpurouter route` must say it measured FILE via VIA
    local decision
    decision=$(GPUROUTER_CONFIG=${3:-$GPUROUTER_CONFIG} "$GR" route --json -- /bin/true "$2")
    if [[ ! $decision =~ \"via\":\ *\"$1\" ]]; then
        echo "run.sh: expected gpurouter to probe $2 via $1, it decided: $decision" >&2
        exit 1
    fi
}
"$GR" run --route cpu -- /bin/true
expect_via native:wav "$WAV"
"$ROUTER" "$WAV"
if ! grep -q 'mode=GPU metric=2 ' "$ROUTER_LOGFILE"; then
    echo "run.sh: the bash router misrouted:" >&2
    cat "$ROUTER_LOGFILE" >&2
    exit 1
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# hyperfine --shell=none splits a command line into words itself (POSIX quoting): quote paths.
GRq=$(printf %q "$GR") PYq=$(printf %q "$PY") ROUTERq=$(printf %q "$ROUTER")
WAVq=$(printf %q "$WAV") OGGq=$(printf %q "$OGG")

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

# ---------------------------------------------------------------- (a) start-up overhead
step "(a) start-up overhead (hyperfine, 5 x 40 runs each)"
bench a 5 40 \
    gpurouter "$GRq run --route cpu -- /bin/true" \
    python "$PYq -c pass" \
    "bash router" "$ROUTERq"
MEMO_WARM=no
[[ -s $XDG_CACHE_HOME/gpurouter/config.memo ]] && MEMO_WARM=yes

# ---------------------------------------------------------------- (b) end to end with a probe
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

# ---------------------------------------------------------------- (c) blocking hand-off
step "(c) blocking hand-off: gpurouter, flock(1), sem"
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
run_step timeout -k 5 150 "$PY" "$HERE/handoff.py" --work "$WORK" --gpurouter "$GR" --lock-dir "$LOCK_DIR" \
    --out "$RESULTS/handoff.json" --job "$JOB" --n 150 --n-sem 20 --sem-hold 1.0

# ---------------------------------------------------------------- (d, e) blocked waiters
step "(d, e) CPU and RSS of blocked waiters"
run_step timeout -k 5 60 "$PY" "$HERE/waiters.py" --work "$WORK" --gpurouter "$GR" --lock-dir "$LOCK_DIR" \
    --out "$RESULTS/waiters.json" --seconds 10

# ---------------------------------------------------------------- the table
LOAD_BEFORE=$LOAD_BEFORE MEMO_WARM=$MEMO_WARM V_HYPERFINE=$(hyperfine --version) \
    V_PARALLEL=$(parallel --version | head -n1) V_FLOCK=$(flock --version) \
    "$PY" - "$RESULTS/facts.json" <<'EOF'
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
}, open(sys.argv[1], "w"))
EOF
step "done"
"$PY" "$HERE/report.py" "$RESULTS"
