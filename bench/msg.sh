#!/usr/bin/env bash
# bench/msg.sh — end-to-end messages per second through the relay, with SQLite and (when a
# database is given) PostgreSQL, in one run.
#
# Per backend: a relay on loopback (`sessionkey relay serve`), two clients with their own
# --state; the sender sends N messages while the recipient is offline (`msg send --lines`:
# one process, one session, each message ratcheted, stored, signed and queued), then the
# recipient receives them all (`msg recv`: fetched, decrypted, stored, acknowledged). Both
# phases are timed; end to end = N / (send time + receive time). Every message is checked to
# arrive, in order.
#
# Usage: bench/msg.sh
# Env knobs (defaults):
#   N=2000                 messages per backend
#   SIZE=100               bytes of text per message
#   BENCH_POSTGRES=        postgres://USER@HOST/DB to measure PostgreSQL too (else skipped,
#                          e.g. postgres://sessionkey:sessionkey@127.0.0.1/sessionkey_test)
#   SK_BASE_PORT=25310     relay port
#   SESSIONKEY_BIN=        use this binary instead of building target/release/sessionkey
set -euo pipefail

N=${N:-2000}
SIZE=${SIZE:-100}
PORT=${SK_BASE_PORT:-25310}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${SESSIONKEY_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked -p sessionkey-cli >&2)
  SESSIONKEY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/sessionkey"
fi
BIN=$SESSIONKEY_BIN
WORK=$(mktemp -d)
RELAY_PID=
cleanup() {
  [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }

run() { # run LABEL [DATABASE_URL]
  local label=$1 db=${2:-} dir="$WORK/$1" tag
  tag="$(date +%s%N | tail -c 9)"
  mkdir -p "$dir"
  local args=(--state "$dir/relay" relay serve --listen "127.0.0.1:$PORT")
  [ -n "$db" ] && args+=(--database "$db")
  SESSIONKEY_LOG=warn "$BIN" "${args[@]}" > "$dir/relay.out" &
  RELAY_PID=$!
  for _ in $(seq 100); do grep -q listening "$dir/relay.out" 2>/dev/null && break; sleep 0.1; done
  "$BIN" --state "$dir/a" msg init --relay "https://127.0.0.1:$PORT" --name "a$tag" > /dev/null
  "$BIN" --state "$dir/b" msg init --relay "https://127.0.0.1:$PORT" --name "b$tag" > /dev/null
  local pad
  pad=$(head -c "$SIZE" /dev/zero | tr '\0' 'x')
  seq -f "%06g $pad" 1 "$N" | cut -c1-"$SIZE" > "$dir/in.txt"
  local t0 t1 t2
  t0=$(now)
  "$BIN" --state "$dir/a" msg send "b$tag" --lines < "$dir/in.txt" 2> /dev/null
  t1=$(now)
  "$BIN" --state "$dir/b" msg recv | sed "s/^a$tag: //" > "$dir/out.txt"
  t2=$(now)
  if ! cmp -s "$dir/in.txt" "$dir/out.txt"; then
    echo "$label: received messages differ from those sent" >&2
    exit 1
  fi
  kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=
  awk -v n="$N" -v l="$label" -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {
    s = b - a; r = c - b;
    printf "| %-10s | %6d | %9.0f | %9.0f | %11.0f |\n", l, n, n / s, n / r, n / (s + r) }'
}

echo "| storage    |      N |   send/s  |   recv/s  | end to end/s |"
echo "|------------|--------|-----------|-----------|--------------|"
run sqlite
if [ -n "${BENCH_POSTGRES:-}" ]; then
  run postgres "$BENCH_POSTGRES"
else
  echo "postgres skipped: set BENCH_POSTGRES=postgres://USER@HOST/DB" >&2
fi
