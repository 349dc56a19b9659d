#!/usr/bin/env bash
# gpurouter in five steps, on the shipped example job examples/bin/transcribe.
# Makes its own media with ffmpeg and keeps every file in a temporary directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpurouter-demo.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export PATH="$here/bin:$PATH"
export GPUROUTER_CONFIG="$work/config.toml"
{ echo "lock_dir = \"$work/locks\""; echo "journal = \"$work/locks/journal.jsonl\""; cat "$here/demo.toml"; } > "$GPUROUTER_CONFIG"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

say "0. media made with ffmpeg: a 2 s and an 8 s clip"
ffmpeg -v error -f lavfi -i sine=frequency=440:duration=2 "$work/short.wav"
ffmpeg -v error -f lavfi -i sine=frequency=440:duration=8 "$work/long.wav"
show gpurouter probe "$work/short.wav" "$work/long.wav"

say "1. a short clip is routed to the GPU (duration < 5s)"
show gpurouter run -- transcribe "$work/short.wav"

say "2. a long clip is routed to the CPU (duration >= 5s)"
show gpurouter run -- transcribe "$work/long.wav"

say "3. while a GPU job holds the only GPU slot, the next one is refused with 75"
JOB_SLEEP=2 gpurouter run -- transcribe "$work/short.wav" > "$work/holder.out" &
holder=$!
sleep 0.5
show gpurouter status
set +e
gpurouter run -- transcribe "$work/short.wav"
echo "exit status: $? (75 = busy: a retrying runner re-queues the job)"
set -e

say "4. with --wait block it sleeps in the kernel and starts the moment the holder exits"
show gpurouter run --wait block -- transcribe "$work/short.wav"
wait "$holder"

say "5. the journal: one JSON line per event"
python3 - "$work/locks/journal.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    waited = f"waited {r['waited_s']:.2f}s" if r.get("waited_s") else ""
    slot = f"slot={r['slot']}" if r.get("slot") else f"pool={r.get('pool') or '-'}"  # refusals and waits hold none
    print(f"{r['ts']}  {r['event']:<5} {r['route']:<3} metric={r['metric']!s:<5} {slot:<11} {r['reason']}  {waited}")
PY
echo
echo "gpurouter stats:"
gpurouter stats
