#!/usr/bin/env bash
# bench/connections.sh — new TCP connections per second through a tunnel pair, sessionkey
# beside stunnel4, in one run.
#
#   client (python asyncio, C at once) -> [tunnel entry 127.0.0.1:PA] -> [tunnel exit :PB]
#                                      -> echo target (python asyncio) :PS
#
# Every connection is a fresh handshake: connect, send 1 KiB, read the 1 KiB echo, close.
# Rows: direct (no tunnel, the reference), sessionkey native hybrid (X25519 + ML-KEM-768,
# IK), native classical (--classic), sessionkey over TLS 1.3 (rustls, --transport tls), and
# stunnel4 (TLS 1.3, EC P-256 certificate, session resumption off on its server so that
# every connection is a full handshake). N rounds, each measuring every row once; medians.
#
# Columns: connections/s (the client's count over T seconds), errors (connections that
# failed: reset, short echo), tunnel CPU % (both tunnel processes, of one core, over the
# run) and tunnel CPU ms per 1000 connections (load distorts this much less than the rate:
# compare it on a busy machine). The client and the echo target are the same Python for
# every row, so only the ratios inside one run mean anything.
#
# The last line of standard output is
#   tunnel-connections-ratio-stunnel: R
# with R = sessionkey native hybrid connections/s / stunnel4 connections/s (two decimals).
#
# Usage: bench/connections.sh   (stunnel4, openssl, python3, ss; root is not needed)
# Env knobs (defaults):
#   T=5             seconds per row
#   N=3             rounds
#   C=8             connections in flight at once
#   SK_SUITE=aes-256-gcm
#   SK_BASE_PORT=25410    ports +1 (echo target), +2 (tunnel exit), +3 (tunnel entry)
#   SESSIONKEY_BIN= use this binary instead of building target/release/sessionkey
# Everything it starts it stops (trap on EXIT/INT/TERM); keys and certificates live in a
# temp dir.
set -euo pipefail

T=${T:-5}
N=${N:-3}
C=${C:-8}
SK_SUITE=${SK_SUITE:-aes-256-gcm}
SK_BASE_PORT=${SK_BASE_PORT:-25410}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PS=$((SK_BASE_PORT + 1))
PB=$((SK_BASE_PORT + 2))
PA=$((SK_BASE_PORT + 3))

log() { printf '[conn-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

for c in python3 ss openssl stunnel4; do command -v "$c" >/dev/null || die "missing $c"; done
[ "$T" -ge 2 ] 2>/dev/null || die "T must be an integer >= 2"
ulimit -n 8192 2>/dev/null || true

WORK=$(mktemp -d -t sk-conn-bench.XXXXXX)
chmod 700 "$WORK"
PIDS=()
stop_pids() {
	local pid
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	PIDS=()
}
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_pids
	stop_echo
	rm -rf "$WORK"
	exit "$rc"
}
ECHO_PID=""
stop_echo() {
	if [ -n "$ECHO_PID" ]; then
		kill -TERM "$ECHO_PID" 2>/dev/null || true
		wait "$ECHO_PID" 2>/dev/null || true
		ECHO_PID=""
	fi
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
	die "nothing listens on port $1: $(tail -n 3 "$WORK"/*.log 2>/dev/null | tr '\n' ' ')"
}
proc_ticks() {
	local s=0 pid v
	for pid in "$@"; do
		v=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$pid/stat" 2>/dev/null || echo 0)
		s=$((s + v))
	done
	echo "$s"
}

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
# prints: connections errors
cat >"$WORK/client.py" <<'EOF'
import asyncio, sys, time
port, seconds, conc = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
payload = bytes(range(256)) * 4
done = errors = 0
async def worker(deadline):
    global done, errors
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            w.write(payload)
            got = await asyncio.wait_for(r.readexactly(len(payload)), 10)
            w.close()
            await w.wait_closed()
            if got == payload:
                done += 1
            else:
                errors += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            errors += 1
async def main():
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(worker(deadline) for _ in range(conc)))
asyncio.run(main())
print(done, errors)
EOF

"$SK" -q keygen -o "$WORK/server.key" >/dev/null 2>&1 || die "keygen failed"
"$SK" -q keygen -o "$WORK/client.key" >/dev/null 2>&1 || die "keygen failed"
SERVER_PUB=$("$SK" -q pubkey "$WORK/server.key")
CLIENT_PUB=$("$SK" -q pubkey "$WORK/client.key")
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
	-subj /CN=localhost -addext subjectAltName=DNS:localhost \
	-keyout "$WORK/tls.key" -out "$WORK/tls.crt" >/dev/null 2>&1 || die "openssl req failed"
cat >"$WORK/stunnel-exit.conf" <<EOF
foreground = yes
pid =
debug = 3
[exit]
accept = 127.0.0.1:$PB
connect = 127.0.0.1:$PS
cert = $WORK/tls.crt
key = $WORK/tls.key
sslVersionMin = TLSv1.3
sessionResume = no
EOF
cat >"$WORK/stunnel-entry.conf" <<EOF
foreground = yes
pid =
debug = 3
[entry]
client = yes
accept = 127.0.0.1:$PA
connect = 127.0.0.1:$PB
sslVersionMin = TLSv1.3
verifyChain = yes
CAfile = $WORK/tls.crt
checkHost = localhost
EOF

# One row: start_LABEL starts the tunnel pair (PIDS), then the client runs T seconds.
RESULTS=$WORK/results.tsv
: >"$RESULTS"
# The per-source handshake rate (default 200/s) would reset a benchmark from one address.
RATE=(--handshakes-per-second-per-source 1000000)
start_row() {
	case $1 in
	direct) ;;
	native-hybrid | native-classic)
		local classic=()
		[ "$1" = native-classic ] && classic=(--classic)
		"$SK" -q tunnel server --listen "127.0.0.1:$PB" --to "127.0.0.1:$PS" --key "$WORK/server.key" \
			--allow "$CLIENT_PUB" --suite "$SK_SUITE" "${RATE[@]}" "${classic[@]}" >"$WORK/server.log" 2>&1 &
		PIDS+=($!)
		wait_listen "$PB"
		"$SK" -q tunnel client --listen "127.0.0.1:$PA" --server "127.0.0.1:$PB" --key "$WORK/client.key" \
			--server-key "$SERVER_PUB" --suite "$SK_SUITE" "${classic[@]}" >"$WORK/client.log" 2>&1 &
		PIDS+=($!)
		;;
	tls)
		"$SK" --state "$WORK/state" tunnel server --transport tls --any-client --listen "127.0.0.1:$PB" \
			--to "127.0.0.1:$PS" --suite "$SK_SUITE" "${RATE[@]}" >"$WORK/server.log" 2>&1 &
		PIDS+=($!)
		wait_listen "$PB"
		local pin
		pin=$(grep -o 'tls-spki-sha256 [A-Za-z0-9+/=]*' "$WORK/server.log" | head -1)
		[ -n "$pin" ] || die "the TLS server logged no pin: $(tail -3 "$WORK/server.log")"
		"$SK" -q tunnel client --transport tls --listen "127.0.0.1:$PA" --server "127.0.0.1:$PB" \
			--server-key "$pin" --suite "$SK_SUITE" >"$WORK/client.log" 2>&1 &
		PIDS+=($!)
		;;
	stunnel)
		stunnel4 "$WORK/stunnel-exit.conf" >"$WORK/server.log" 2>&1 &
		PIDS+=($!)
		wait_listen "$PB"
		stunnel4 "$WORK/stunnel-entry.conf" >"$WORK/client.log" 2>&1 &
		PIDS+=($!)
		;;
	esac
	[ "$1" = direct ] || wait_listen "$PA"
}

label_of() {
	case $1 in
	direct) echo "direct (no tunnel, 1 hop)" ;;
	native-hybrid) echo "sessionkey native, hybrid X25519+ML-KEM-768 (IK), $SK_SUITE" ;;
	native-classic) echo "sessionkey native, classical X25519 (IK), $SK_SUITE" ;;
	tls) echo "sessionkey tls (rustls), $SK_SUITE" ;;
	stunnel) echo "stunnel4 TLS 1.3 (OpenSSL), resumption off" ;;
	esac
}

ROWS=${ROWS:-"direct native-hybrid native-classic tls stunnel"}
python3 "$WORK/echo.py" "$PS" >"$WORK/echo.log" 2>&1 &
ECHO_PID=$!
wait_listen "$PS"
SECONDS=0
for round in $(seq 1 "$N"); do
	for row in $ROWS; do
		start_row "$row"
		port=$PA
		[ "$row" = direct ] && port=$PS
		t0=$(date +%s.%N)
		tk0=$(proc_ticks "${PIDS[@]}")
		read -r conns errs < <(python3 "$WORK/client.py" "$port" "$T" "$C" 2>"$WORK/client-py.log" || echo "0 0")
		tk1=$(proc_ticks "${PIDS[@]}")
		t1=$(date +%s.%N)
		stop_pids
		read -r rate cpu ms < <(awk -v c="$conns" -v t0="$t0" -v t1="$t1" -v a="$tk0" -v b="$tk1" \
			-v hz="$(getconf CLK_TCK)" -v T="$T" -v row="$row" 'BEGIN {
				dt = t1 - t0; cpu = (b - a) / hz
				printf "%.0f %s %s\n", c / T, (row == "direct" ? "-" : sprintf("%.0f", cpu / dt * 100)),
					(row == "direct" || c == 0 ? "-" : sprintf("%.0f", cpu * 1000 / c * 1000)) }')
		printf '%s\t%s\t%s\t%s\t%s\n' "$row" "$rate" "$errs" "$cpu" "$ms" >>"$RESULTS"
		log "round $round/$N | $(label_of "$row") | $rate conn/s | $errs errors | tunnel CPU $cpu% | $ms ms per 1000"
	done
done
stop_echo

median() { tr ' ' '\n' | grep -v '^-*$' | sort -n | awk '{a[NR]=$1} END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR+1)/2]; else printf "%.0f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
col() { awk -F'\t' -v r="$1" -v c="$2" '$1 == r { printf "%s ", $c }' "$RESULTS" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a != "-") printf "%.2f", a / b; else printf "-" }'; }

STUNNEL=$(col stunnel 2)
echo "# bench/connections.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): $(nproc) CPU, T=$T s per row, $C connections at once, medians of $N rounds; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| path | connections/s | runs | errors (sum) | tunnel CPU % | tunnel CPU ms per 1000 connections | / stunnel4 |"
echo "|---|---:|---|---:|---:|---:|---:|"
for row in $ROWS; do
	runs=$(awk -F'\t' -v r="$row" '$1 == r { printf "%s%s", (n++ ? " " : ""), $2 }' "$RESULTS")
	errs=$(awk -F'\t' -v r="$row" '$1 == r { s += $3 } END { print s + 0 }' "$RESULTS")
	rate=$(col "$row" 2)
	echo "| $(label_of "$row") | $rate | $runs | $errs | $(col "$row" 4) | $(col "$row" 5) | $(ratio "$rate" "$STUNNEL") |"
done
echo
echo "total wall time: ${SECONDS}s"
echo "tunnel-connections-ratio-stunnel: $(ratio "$(col native-hybrid 2)" "$STUNNEL")"
