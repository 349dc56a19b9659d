#!/usr/bin/env bash
# Transcribe every file given on the command line with GNU parallel and gpurouter.
#
#   transcribe-all.sh /srv/media/*.wav
#   OUT=/srv/transcripts JOBS=4 WAIT=2h transcribe-all.sh /srv/media/*
#
# GNU parallel's --retries re-runs a failed job within milliseconds, so a fail-fast exit 75
# would burn every retry at once. Each call therefore waits for a slot itself (a bounded
# wait, WAIT); only a job whose wait ran out exits 75 and is retried, WAIT later at the
# earliest. --retries retries any failure, not only 75: keep it small.
# Exit status: that of GNU parallel (the number of jobs that failed in the end, 0 = all done).
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 FILE..." >&2
    exit 2
fi

out="${OUT:-transcripts}"        # output directory
jobs="${JOBS:-3}"                # at most this many calls at once (GPU slots + CPU slots is enough)
wait="${WAIT:-1h}"               # longest wait for a slot per attempt
retries="${RETRIES:-3}"          # attempts per file (GNU parallel counts the first run)
whisper="${WHISPER:-whisper-ctranslate2}"

mkdir -p "$out"
parallel --quote --jobs "$jobs" --retries "$retries" --joblog "$out/joblog.tsv" \
    gpurouter run --wait "$wait" -- "$whisper" --output_dir "$out" {} \
    ::: "$@"
