#!/usr/bin/env bash
# bench/idle.sh — memory per idle established session in a sessionkey tunnel pair.
#
#   client (python, N connections) -> [tunnel client 127.0.0.1:PA] -> [tunnel server :PB]
#                                  -> echo target (python) :PS
#
# Each of the N connections gets a fresh session, carries 1 KiB each way (an echo, so the
# data path ran once), then stays open and idle. After SETTLE seconds the script reads the
# resident set size (VmRSS) of each tunnel process and prints, per side,
#   (RSS with N idle sessions - RSS before the first connection) / N
# as KiB per session. The last line of standard output is
#   tunnel-idle-kib-per-session: C S
# with C the client side's and S the server side's figure.
#
# Usage: bench/idle.sh   (any user; needs python3, ss, and the sessionkey binary)
# Env knobs (defaults):
#   N=2000            idle sessions
#   SETTLE=3          seconds between the last echo and the RSS reading
#   SK_SUITE=aes-256-gcm, SK_CLASSIC=0 (1: --classic), SK_TRANSPORT=native (or tls)
#   SK_BASE_PORT=25310     ports +1 (echo target), +2 (tunnel server), +3 (tunnel client)
#   SESSIONKEY_BIN=   use this binary instead of building target/release/sessionkey
# Everything it starts it stops (trap on EXIT/INT/TERM); keys live in a temp dir.
set -euo pipefail

N=${N:-2000}
SETTLE=${SETTLE:-3}
SK_SUITE=${SK_SUITE:-aes-256-gcm}
SK_CLASSIC=${SK_CLASSIC:-0}
SK_TRANSPORT=${SK_TRANSPORT:-native}
SK_BASE_PORT=${SK_BASE_PORT:-25310}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PS=$((SK_BASE_PORT + 1))
PB=$((SK_BASE_PORT + 2))
PA=$((SK_BASE_PORT + 3))

log() { printf '[idle-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# Three descriptors per session on the way (client, tunnel sockets), and some slack.
need_fds=$((2 * N + 64))
[ "$(ulimit -n)" -ge "$need_fds" ] 2>/dev/null || ulimit -n "$need_fds" 2>/dev/null ||
	die "N=$N needs $need_fds open files per process (ulimit -n is $(ulimit -n))"
command -v python3 >/dev/null || die "python3 is needed"

WORK=$(mktemp -d -t sk-idle-bench.XXXXXX)
chmod 700 "$WORK"
PIDS=()
cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

if [ -n "${SESSIONKEY_BIN:-}" ]; then
	SK=$SESSIONKEY_BIN
else
	log "building sessionkey (cargo build --release -p sessionkey-cli)"
	(cd "$REPO" && cargo build --release -q -p sessionkey-cli) >&2 || die "build failed"
	SK=$REPO/target/release/sessionkey
fi

wait_listen() {
	local i
	for i in $(seq 1 100); do
		ss -Hltn "sport = :$1" | grep -q . && return 0
		sleep 0.05
	done
	die "nothing listens on port $1: $(tail -3 "$WORK"/*.log 2>/dev/null)"
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# The echo target: echoes what it reads, keeps every connection open until the peer closes.
cat >"$WORK/echo.py" <<'EOF'
import asyncio, sys
async def serve(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except ConnectionError:
        pass
    w.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with server:
        await server.serve_forever()
asyncio.run(main())
EOF
# The client: N connections, one at a time, each a 1 KiB echo; then hold them all open.
cat >"$WORK/clients.py" <<'EOF'
import socket, sys, time
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
payload = bytes(range(256)) * 4
held = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(len(payload) - len(got))
        if not chunk:
            sys.exit(f"connection {i} closed after {len(got)} bytes")
        got += chunk
    if got != payload:
        sys.exit(f"connection {i}: the echo differs")
    held.append(s)
open(ready, "w").close()
time.sleep(3600)
EOF

"$SK" -q keygen -o "$WORK/server.key" >/dev/null 2>&1
"$SK" -q keygen -o "$WORK/client.key" >/dev/null 2>&1
SERVER_PUB=$("$SK" -q pubkey "$WORK/server.key")
CLIENT_PUB=$("$SK" -q pubkey "$WORK/client.key")
classic=()
[ "$SK_CLASSIC" = 1 ] && classic=(--classic)

python3 "$WORK/echo.py" "$PS" >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
wait_listen "$PS"
# The per-source handshake rate (default 200/s) would reset our burst from one address.
if [ "$SK_TRANSPORT" = tls ]; then
	"$SK" --state "$WORK/state" tunnel server --transport tls --any-client --listen "127.0.0.1:$PB" \
		--to "127.0.0.1:$PS" --suite "$SK_SUITE" --handshakes-per-second-per-source 1000000 >"$WORK/server.log" 2>&1 &
	SRV=$!
	PIDS+=("$SRV")
	wait_listen "$PB"
	pin=$(grep -o 'tls-spki-sha256 [A-Za-z0-9+/=]*' "$WORK/server.log" | head -1)
	"$SK" -q tunnel client --transport tls --listen "127.0.0.1:$PA" --server "127.0.0.1:$PB" \
		--server-key "$pin" --suite "$SK_SUITE" >"$WORK/client.log" 2>&1 &
else
	"$SK" -q tunnel server --listen "127.0.0.1:$PB" --to "127.0.0.1:$PS" --key "$WORK/server.key" \
		--allow "$CLIENT_PUB" --suite "$SK_SUITE" --handshakes-per-second-per-source 1000000 "${classic[@]}" >"$WORK/server.log" 2>&1 &
	SRV=$!
	PIDS+=("$SRV")
	wait_listen "$PB"
	"$SK" -q tunnel client --listen "127.0.0.1:$PA" --server "127.0.0.1:$PB" --key "$WORK/client.key" \
		--server-key "$SERVER_PUB" --suite "$SK_SUITE" "${classic[@]}" >"$WORK/client.log" 2>&1 &
fi
CLI=$!
PIDS+=("$CLI")
wait_listen "$PA"
sleep 0.5
c0=$(rss_kib "$CLI")
s0=$(rss_kib "$SRV")
log "RSS before: client $c0 KiB, server $s0 KiB; opening $N sessions"
python3 "$WORK/clients.py" "$PA" "$N" "$WORK/ready" >"$WORK/clients.log" 2>&1 &
CL=$!
PIDS+=("$CL")
for _ in $(seq 1 $((N * 2 + 600))); do
	[ -e "$WORK/ready" ] && break
	kill -0 "$CL" 2>/dev/null || die "the client failed: $(tail -3 "$WORK/clients.log") $(tail -3 "$WORK/client.log" "$WORK/server.log")"
	sleep 0.1
done
[ -e "$WORK/ready" ] || die "timeout opening $N sessions"
sleep "$SETTLE"
c1=$(rss_kib "$CLI")
s1=$(rss_kib "$SRV")
open_sessions=$(ss -Htn state established "( sport = :$PB )" | wc -l)
[ "$open_sessions" -ge "$N" ] || die "only $open_sessions of $N sessions are open"
per() { awk -v a="$1" -v b="$2" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }'; }
echo "# bench/idle.sh: $N idle sessions ($SK_TRANSPORT, $SK_SUITE$([ "$SK_CLASSIC" = 1 ] && echo ', classic')), each after a 1 KiB echo"
echo "| side | RSS before (KiB) | RSS with $N sessions (KiB) | KiB per session |"
echo "|---|---:|---:|---:|"
echo "| tunnel client | $c0 | $c1 | $(per "$c0" "$c1") |"
echo "| tunnel server | $s0 | $s1 | $(per "$s0" "$s1") |"
echo "tunnel-idle-kib-per-session: $(per "$c0" "$c1") $(per "$s0" "$s1")"
