#!/usr/bin/env bash
# bench/tunnel.sh — iperf3 through a sessionkey tunnel beside the peer tools of
# ../shared/bench/peers.sh (no-crypto relay ceiling, spiped, stunnel4, ssh -L), in one run.
#
#   iperf3 -c -> [sessionkey tunnel client 127.0.0.1:PA] -> [sessionkey tunnel server 127.0.0.1:PB]
#             -> iperf3 -s 127.0.0.1:PS
#
# The peers are measured by peers.sh itself (SECTIONS=A, one stream, OUT_TSV), and
# sessionkey exactly as peers.sh measures a tunnel: same 3-hop loopback topology, same
# iperf3 flags (-t T -P 1 -J, receiver-side rate), CPU sampled in [1.5 s, T-1 s]. N rounds,
# each one peers.sh run followed by one sessionkey run, so the two see the same machine
# load; every figure is the median over the rounds.
#
# Prints a markdown table (Gbit/s, CPU, counters and ratios); the line before last is
#   tunnel-ratio-ceiling: C
# and the last line of standard output is
#   tunnel-ratio-best-peer: R
# where R = sessionkey Gbit/s / best peer Gbit/s (peers: the rows with crypto; the
# no-crypto relays are the ceiling, not peers) and C = sessionkey Gbit/s / ceiling, two
# decimals.
#
# Counters that machine load distorts less than Gbit/s, per row where this script starts
# the processes (sessionkey, and the no-crypto relay once more): context switches per GB
# moved (all threads of both tunnel processes, /proc/PID/task/*/status) and, when `perf`
# works, syscalls per GB (raw_syscalls:sys_enter). CPU % per Gbit/s is on every row.
#
# Usage: sudo bench/tunnel.sh       (root: apt-get installs, and peers.sh requires it)
# Env knobs (defaults):
#   T=5               iperf3 -t seconds per configuration (>= 4)
#   N=3               rounds (medians are taken over them)
#   SK_SUITE=aes-256-gcm   --suite for the sessionkey tunnel (aes-256-gcm, aes-128-gcm,
#                     chacha20-poly1305); the headline row
#   SK_EXTRA_SUITES=""     more suites to measure as extra rows (not in the ratio); with
#                          both aes-256-gcm and chacha20-poly1305 measured, a line
#                          chacha-ratio-aes: sessionkey's ChaCha20 / AES-GCM, and ssh's
#   SK_TLS=1               also measure the TLS transport (row "sessionkey tunnel, tls ...",
#                          and a line tls-ratio-stunnel4: sessionkey TLS / stunnel4)
#   SK_CLASSIC=0      1: --classic (X25519 only; only the handshake differs)
#   SK_METRICS=1      also measure the headline suite with --metrics on both ends, scraped
#                     every second during the run (row "..., metrics scraped every 1 s", and
#                     a line metrics-ratio-on-off: with metrics / without, same rounds)
#   SK_BASE_PORT=25210     sessionkey uses ports +1 (iperf3), +2 (server), +3 (client)
#   SK_PEERS=1        0: skip peers.sh (a quick run: sessionkey and the relay only; the
#                     best-peer ratio is then "-")
#   SK_RELAY=1        also run peers.sh's no-crypto relay here, with the counters
#   SK_PERF=1         count syscalls with perf (0, or no working perf: column "-")
#   SESSIONKEY_BIN=   use this binary instead of building target/release/sessionkey
#   SHARED=           the shared/ folder (default: ../../shared from this script)
#   OUT_MD=file       also write the table to this file
#   OUT_TSV=file      also write machine-readable rows (label, median Gbit/s, runs, ...)
#   KEEP_WORK=1       keep the temp dir (logs, iperf3 JSON, peers.sh tables)
# Everything it starts it stops (trap on EXIT/INT/TERM); keys live in the temp dir.
set -euo pipefail

T=${T:-5}
N=${N:-3}
SK_SUITE=${SK_SUITE:-aes-256-gcm}
SK_EXTRA_SUITES=${SK_EXTRA_SUITES:-}
SK_TLS=${SK_TLS:-1}
SK_CLASSIC=${SK_CLASSIC:-0}
SK_METRICS=${SK_METRICS:-1}
SK_BASE_PORT=${SK_BASE_PORT:-25210}
SK_PEERS=${SK_PEERS:-1}
SK_RELAY=${SK_RELAY:-1}
SK_PERF=${SK_PERF:-1}
OUT_MD=${OUT_MD:-}
OUT_TSV=${OUT_TSV:-}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$HERE/../.." && pwd)/shared}
PEERS=$SHARED/bench/peers.sh

log() { printf '[tunnel-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

[ "$SK_PEERS" = 0 ] || [ -f "$PEERS" ] || die "peers.sh not found at $PEERS: this script expects the shared/ folder beside the repository (set SHARED=/path/to/shared)"
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, and peers.sh needs root)"
[ "$T" -ge 4 ] 2>/dev/null || die "T must be an integer >= 4 (CPU is sampled in [1.5 s, T-1 s])"
[ "$N" -ge 1 ] 2>/dev/null || die "N must be an integer >= 1"

CLASSIC_TAG=""
[ "$SK_CLASSIC" = 1 ] && CLASSIC_TAG=", classic"
PS=$((SK_BASE_PORT + 1)) # iperf3 server
PB=$((SK_BASE_PORT + 2)) # sessionkey tunnel server (exit)
PA=$((SK_BASE_PORT + 3)) # sessionkey tunnel client (entry)
PMS=$((SK_BASE_PORT + 4)) # metrics of the tunnel server (SK_METRICS=1)
PMC=$((SK_BASE_PORT + 5)) # metrics of the tunnel client

# ---------------------------------------------------------------- cleanup
WORK=$(mktemp -d -t sk-tunnel-bench.XXXXXX)
chmod 700 "$WORK"
PIDS=()          # processes this script started (sessionkey tunnels, iperf3 server)
PEERS_PID=""     # peers.sh while it runs
POLICY_RC_MADE=0 # whether we created /usr/sbin/policy-rc.d for the install

stop_pid() { # stop_pid PID [SECONDS=2]: TERM, wait, then KILL
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 1 $((${2:-2} * 20))); do
		kill -0 "$pid" 2>/dev/null || break
		[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
		sleep 0.05
	done
	kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] &&
		kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null || true
}

stop_all() {
	local pid
	for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
	PIDS=()
	# peers.sh, if it is running: give it time to stop what it started (its own trap)
	if [ -n "$PEERS_PID" ]; then stop_pid "$PEERS_PID" 30; PEERS_PID=""; fi
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_all
	[ "$POLICY_RC_MADE" = 1 ] && rm -f /usr/sbin/policy-rc.d
	if [ "${KEEP_WORK:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

start_bg() { # start_bg NAME CMD... ; sets LAST_PID
	local name=$1
	shift
	"$@" >"$WORK/$name.log" 2>&1 </dev/null &
	LAST_PID=$!
	PIDS+=("$LAST_PID")
}

# ---------------------------------------------------------------- install
# command -> Debian package; peers.sh skips a peer whose tool is missing, so install them all.
need_pkgs=()
while read -r cmd pkg; do
	command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ] || need_pkgs+=("$pkg")
done <<-'EOF'
	iperf3 iperf3
	jq jq
	socat socat
	spiped spiped
	stunnel4 stunnel4
	/usr/sbin/sshd openssh-server
	ssh openssh-client
	ssh-keygen openssh-client
	openssl openssl
	ip iproute2
	ss iproute2
	flock util-linux
	awk gawk
EOF
if [ ${#need_pkgs[@]} -gt 0 ]; then
	mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
	command -v apt-get >/dev/null || die "missing ${need_pkgs[*]} and no apt-get to install them"
	log "installing with apt-get: ${need_pkgs[*]}"
	# Do not let the packages start services (sshd on :22, iperf3 daemon): a temporary
	# policy-rc.d, only if the machine has none.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		POLICY_RC_MADE=1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2 || die "apt-get update failed"
	apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2 || die "apt-get install ${need_pkgs[*]} failed"
	if [ "$POLICY_RC_MADE" = 1 ]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_MADE=0; fi
fi
command -v cargo >/dev/null || [ -n "${SESSIONKEY_BIN:-}" ] ||
	die "cargo is needed to build sessionkey (and peers.sh's relay): install Rust (https://rustup.rs)"

# ---------------------------------------------------------------- build
if [ -n "${SESSIONKEY_BIN:-}" ]; then
	SK=$SESSIONKEY_BIN
else
	log "building sessionkey (cargo build --release -p sessionkey-cli)"
	(cd "$REPO" && cargo build --release -q -p sessionkey-cli) >&2 || die "sessionkey build failed"
	SK=$REPO/target/release/sessionkey
fi
[ -x "$SK" ] || die "no sessionkey binary at $SK"

# ---------------------------------------------------------------- helpers
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }

wait_listen() { # wait_listen PORT
	local i
	for i in $(seq 1 100); do
		ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && return 0
		sleep 0.05
	done
	log "timeout waiting for port $1"
	return 1
}

# utime+stime (ticks) of whole processes (all threads) — the tunnel has no child processes
proc_ticks() {
	local s=0 pid v
	for pid in "$@"; do
		v=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$pid/stat" 2>/dev/null || echo 0)
		s=$((s + v))
	done
	echo "$s"
}

# context switches (voluntary + involuntary) of every thread of the processes
proc_ctx() {
	local pid
	for pid in "$@"; do cat "/proc/$pid"/task/*/status 2>/dev/null; done |
		awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { print s + 0 }'
}

# "busy steal total" jiffies, all CPUs (same formula as peers.sh)
sys_ticks() { awk '/^cpu /{busy=$2+$3+$4+$7+$8; steal=$9; tot=$2+$3+$4+$5+$6+$7+$8+$9; print busy, steal, tot; exit}' /proc/stat; }

# Whether perf can count syscalls of a process here (it needs the tracepoints).
PERF_OK=0
if [ "$SK_PERF" = 1 ] && command -v perf >/dev/null 2>&1 &&
	perf stat -x, -e raw_syscalls:sys_enter -o /dev/null -- true >/dev/null 2>&1; then
	PERF_OK=1
fi

SK_RESULTS=$WORK/sessionkey.tsv
: >"$SK_RESULTS"

# sk_iperf LABEL ROUND PIDS... : one iperf3 run through the entry port, like peers.sh
# run_iperf, plus the counters of the given processes over the CPU window
sk_iperf() {
	local label=$1 round=$2
	shift 2
	local tag
	tag=$(echo "$label" | tr -c 'A-Za-z0-9_.-' '_')
	local json=$WORK/sk-$round-$tag.json perf_out=$WORK/perf-$round-$tag.csv
	iperf3 -c 127.0.0.1 -p "$PA" -t "$T" -P 1 -J >"$json" 2>"$json.err" &
	local cpid=$!
	sleep 1.5
	local t0 tk0 s0 x0 t1 tk1 s1 x1 window
	window=$(awk -v t="$T" 'BEGIN{print t-2.5}')
	t0=$(date +%s.%N); tk0=$(proc_ticks "$@"); s0=$(sys_ticks); x0=$(proc_ctx "$@")
	if [ "$PERF_OK" = 1 ]; then
		perf stat -x, -e raw_syscalls:sys_enter -p "$(IFS=,; echo "$*")" -o "$perf_out" -- sleep "$window" >/dev/null 2>&1 || sleep "$window"
	else
		sleep "$window"
	fi
	t1=$(date +%s.%N); tk1=$(proc_ticks "$@"); s1=$(sys_ticks); x1=$(proc_ctx "$@")
	local waited=0
	while kill -0 "$cpid" 2>/dev/null && [ $waited -lt $(((T + 15) * 10)) ]; do sleep 0.1; waited=$((waited + 1)); done
	kill -0 "$cpid" 2>/dev/null && kill -TERM "$cpid" 2>/dev/null
	wait "$cpid" 2>/dev/null || true
	local gbps=FAIL retr=-
	if jq -e '.end.sum_received.bits_per_second' "$json" >/dev/null 2>&1; then
		gbps=$(jq '.end.sum_received.bits_per_second' "$json" | awk '{printf "%.2f", $1/1e9}')
		retr=$(jq '.end.sum_sent.retransmits // 0' "$json")
	else
		log "iperf3 through $label failed: $(jq -r '.error // empty' "$json" 2>/dev/null) $(head -c 300 "$json.err")"
		log "logs: $(tail -n 3 "$WORK"/sk-*.log "$WORK"/relay-*.log 2>/dev/null | tr '\n' ' ')"
	fi
	local syscalls=-
	[ -s "$perf_out" ] && syscalls=$(awk -F, '$3 ~ /raw_syscalls:sys_enter/ && $1 ~ /^[0-9]+$/ { print $1 }' "$perf_out")
	local tcpu syscpu steal ctx_gb sys_gb
	# bytes moved in the window: the run's receiver rate times the window
	read -r tcpu syscpu steal ctx_gb sys_gb < <(awk -v t0="$t0" -v t1="$t1" -v a="$tk0" -v b="$tk1" \
		-v hz="$(getconf CLK_TCK)" -v s0="$s0" -v s1="$s1" -v ncpu="$(nproc)" -v x0="$x0" -v x1="$x1" \
		-v g="$gbps" -v sc="${syscalls:--}" 'BEGIN{
			dt=t1-t0; split(s0,x," "); split(s1,y," "); dtot=y[3]-x[3]; if (dtot<=0) dtot=1
			gb = (g == "FAIL") ? 0 : g * dt / 8
			printf "%.0f %.0f %.0f %s %s\n", (b-a)/hz/dt*100, (y[1]-x[1])/dtot*100*ncpu, (y[2]-x[2])/dtot*100*ncpu,
				(gb > 0 ? sprintf("%.0f", (x1-x0)/gb) : "-"), (gb > 0 && sc != "-" ? sprintf("%.0f", sc/gb) : "-") }')
	# peers.sh's OUT_TSV columns, then context switches and syscalls per GB
	printf 'SK\t%s\t1\t%s\t%s\t%s\t-\t%s\t%s\t%s\t%s\t%s\n' "$label" "$gbps" "$retr" "$tcpu" "$syscpu" "$steal" "round $round" "$ctx_gb" "$sys_gb" >>"$SK_RESULTS"
	log "SK | $label | round $round | $gbps Gbit/s | tunnel CPU ${tcpu}% | ctx/GB $ctx_gb | syscalls/GB $sys_gb | sys ${syscpu}%/$(($(nproc) * 100))% | steal ${steal}%"
}

# peers.sh's no-crypto relay (it builds it), measured here too so that the ceiling has the
# same counters as sessionkey
RELAY_BIN=${PEERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sessionkey-peers}/relay-target/release/relay
relay_round() {
	local round=$1 p
	for p in $PS $PB $PA; do port_busy "$p" && die "port $p busy (set SK_BASE_PORT)"; done
	start_bg sk-iperf3-srv iperf3 -s -B 127.0.0.1 -p "$PS"
	wait_listen "$PS" || die "iperf3 server did not start: $(tail -3 "$WORK/sk-iperf3-srv.log")"
	start_bg relay-exit "$RELAY_BIN" "127.0.0.1:$PB" "127.0.0.1:$PS" copy 262144
	local r2=$LAST_PID
	start_bg relay-entry "$RELAY_BIN" "127.0.0.1:$PA" "127.0.0.1:$PB" copy 262144
	local r1=$LAST_PID
	wait_listen "$PB" && wait_listen "$PA" || die "the relay did not start: $(tail -3 "$WORK"/relay-*.log)"
	sk_iperf "rust relay x2, copy 256K (no crypto), with counters" "$round" "$r1" "$r2"
	stop_all
}

# one sessionkey measurement: fresh iperf3 server and tunnel pair, then stop them;
# METRICS=1: both ends serve --metrics and a loop scrapes both every second
sk_round() {
	local round=$1 suite=$2 metrics=${3:-0} p
	for p in $PS $PB $PA; do port_busy "$p" && die "port $p busy (set SK_BASE_PORT)"; done
	local classic=() msrv=() mcli=() tag=""
	[ "$SK_CLASSIC" = 1 ] && classic=(--classic)
	if [ "$metrics" = 1 ]; then
		msrv=(--metrics "127.0.0.1:$PMS")
		mcli=(--metrics "127.0.0.1:$PMC")
		tag=", metrics scraped every 1 s"
	fi
	start_bg sk-iperf3-srv iperf3 -s -B 127.0.0.1 -p "$PS"
	wait_listen "$PS" || die "iperf3 server did not start: $(tail -3 "$WORK/sk-iperf3-srv.log")"
	start_bg sk-server "$SK" -q tunnel server --listen "127.0.0.1:$PB" --to "127.0.0.1:$PS" \
		--key "$KEYS/server.key" --allow "$CLIENT_PUB" --suite "$suite" "${classic[@]}" "${msrv[@]}"
	local srv=$LAST_PID
	wait_listen "$PB" || die "sessionkey tunnel server did not start: $(tail -3 "$WORK/sk-server.log")"
	start_bg sk-client "$SK" -q tunnel client --listen "127.0.0.1:$PA" --server "127.0.0.1:$PB" \
		--key "$KEYS/client.key" --server-key "$SERVER_PUB" --suite "$suite" "${classic[@]}" "${mcli[@]}"
	local cli=$LAST_PID
	wait_listen "$PA" || die "sessionkey tunnel client did not start: $(tail -3 "$WORK/sk-client.log")"
	if [ "$metrics" = 1 ]; then
		start_bg sk-scrape bash -c "while :; do for p in $PMS $PMC; do curl -sf http://127.0.0.1:\$p/metrics >/dev/null || echo scrape failed \$p; done; sleep 1; done"
	fi
	sk_iperf "sessionkey tunnel, $suite$CLASSIC_TAG$tag" "$round" "$cli" "$srv"
	stop_all
}

# one sessionkey measurement over TLS 1.3 (--transport tls, self-signed certificate pinned
# by the client), to compare with stunnel4 (also TLS)
sk_tls_round() {
	local round=$1 p
	for p in $PS $PB $PA; do port_busy "$p" && die "port $p busy (set SK_BASE_PORT)"; done
	start_bg sk-iperf3-srv iperf3 -s -B 127.0.0.1 -p "$PS"
	wait_listen "$PS" || die "iperf3 server did not start: $(tail -3 "$WORK/sk-iperf3-srv.log")"
	start_bg sk-tls-server "$SK" --state "$WORK/tls-state" tunnel server --transport tls --any-client \
		--listen "127.0.0.1:$PB" --to "127.0.0.1:$PS" --suite "$SK_SUITE"
	local srv=$LAST_PID
	wait_listen "$PB" || die "sessionkey TLS server did not start: $(tail -3 "$WORK/sk-tls-server.log")"
	local pin
	pin=$(grep -o 'tls-spki-sha256 [A-Za-z0-9+/=]*' "$WORK/sk-tls-server.log" | head -1)
	[ -n "$pin" ] || die "the TLS server logged no certificate pin: $(tail -3 "$WORK/sk-tls-server.log")"
	start_bg sk-tls-client "$SK" -q tunnel client --transport tls --listen "127.0.0.1:$PA" \
		--server "127.0.0.1:$PB" --server-key "$pin" --suite "$SK_SUITE"
	local cli=$LAST_PID
	wait_listen "$PA" || die "sessionkey TLS client did not start: $(tail -3 "$WORK/sk-tls-client.log")"
	sk_iperf "sessionkey tunnel, tls $SK_SUITE" "$round" "$cli" "$srv"
	stop_all
}

# ---------------------------------------------------------------- keys
KEYS=$WORK/keys
mkdir -m 700 "$KEYS"
for k in server client; do
	"$SK" -q keygen -o "$KEYS/$k.key" >/dev/null 2>"$WORK/keygen.log" || die "sessionkey keygen failed: $(cat "$WORK/keygen.log")"
done
SERVER_PUB=$("$SK" -q pubkey "$KEYS/server.key" 2>>"$WORK/keygen.log") || die "sessionkey pubkey failed: $(cat "$WORK/keygen.log")"
CLIENT_PUB=$("$SK" -q pubkey "$KEYS/client.key" 2>>"$WORK/keygen.log") || die "sessionkey pubkey failed: $(cat "$WORK/keygen.log")"

# ---------------------------------------------------------------- run
SECONDS=0
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "work dir $WORK; T=$T s, N=$N rounds, peers from $PEERS; load average $LOAD0"
PEER_TSVS=()
for round in $(seq 1 "$N"); do
	if [ "$SK_PEERS" = 1 ]; then
		log "round $round/$N: peers.sh (SECTIONS=A PAR_A=0 T=$T)"
		# peers.sh refuses to run beside another run of itself (its lock): wait for that one.
		if [ -e /run/anchors-bench/lock ] && ! flock -n /run/anchors-bench/lock true; then
			log "another peers.sh run holds /run/anchors-bench/lock: waiting (at most 15 minutes)"
			flock -w 900 /run/anchors-bench/lock true || die "peers.sh stayed busy for 15 minutes"
		fi
		tsv=$WORK/peers-$round.tsv
		SECTIONS=A PAR_A=0 T=$T OUT_TSV=$tsv bash "$PEERS" >"$WORK/peers-$round.md" &
		PEERS_PID=$!
		wait "$PEERS_PID" || die "peers.sh failed (round $round)"
		PEERS_PID=""
		[ -s "$tsv" ] || die "peers.sh wrote no rows (round $round)"
		PEER_TSVS+=("$tsv")
	fi
	if [ "$SK_RELAY" = 1 ]; then
		if [ -x "$RELAY_BIN" ]; then
			log "round $round/$N: the no-crypto relay, with counters"
			relay_round "$round"
		else
			log "no relay at $RELAY_BIN (peers.sh builds it): no relay row with counters"
		fi
	fi
	# With metrics: before the rows without in even rounds, after them in odd ones, so
	# that neither gets the quieter half of the round on a loaded machine.
	if [ "$SK_METRICS" = 1 ] && [ $((round % 2)) = 0 ]; then
		log "round $round/$N: sessionkey, $SK_SUITE, metrics scraped every 1 s"
		sk_round "$round" "$SK_SUITE" 1
	fi
	for suite in $SK_SUITE $SK_EXTRA_SUITES; do
		log "round $round/$N: sessionkey, $suite"
		sk_round "$round" "$suite"
	done
	if [ "$SK_METRICS" = 1 ] && [ $((round % 2)) = 1 ]; then
		log "round $round/$N: sessionkey, $SK_SUITE, metrics scraped every 1 s"
		sk_round "$round" "$SK_SUITE" 1
	fi
	if [ "$SK_TLS" = 1 ]; then
		log "round $round/$N: sessionkey over TLS, $SK_SUITE"
		sk_tls_round "$round"
	fi
done

# ---------------------------------------------------------------- report
ALL=$WORK/all.tsv
cat ${PEER_TSVS[@]+"${PEER_TSVS[@]}"} "$SK_RESULTS" >"$ALL"
HEADLINE="sessionkey tunnel, $SK_SUITE$CLASSIC_TAG"

# per label (first-seen order): median Gbit/s, the runs, median tunnel CPU %, median system
# busy %, median CPU % per Gbit/s, median context switches and syscalls per GB ("-": not
# measured for that row)
SUMMARY=$WORK/summary.tsv
awk -F'\t' '
	function median(s,   a, n, i, j, t) {
		n = split(s, a, " ")
		if (n == 0) return ""
		for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j+1] = a[j]; a[j+1] = t }
		return (n % 2) ? a[(n+1)/2] + 0 : (a[n/2] + a[n/2+1]) / 2
	}
	function fmt(s, f,   m) { m = median(s); return (m == "") ? "-" : sprintf(f, m) }
	{
		l = $2
		if (!(l in seen)) { seen[l] = 1; order[++k] = l; sec[l] = $1 }
		runs[l] = runs[l] (runs[l] == "" ? "" : " ") $4
		if ($4 != "FAIL") g[l] = g[l] " " $4
		if ($6 != "-") c[l] = c[l] " " $6
		if ($8 != "-") b[l] = b[l] " " $8
		if ($4 != "FAIL" && $4 + 0 > 0 && $6 != "-") cg[l] = cg[l] " " ($6 / $4)
		if (NF >= 11 && $11 != "-") x[l] = x[l] " " $11
		if (NF >= 12 && $12 != "-") y[l] = y[l] " " $12
	}
	END {
		for (i = 1; i <= k; i++) {
			l = order[i]
			printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sec[l], l, fmt(g[l], "%.2f"), runs[l],
				fmt(c[l], "%.0f"), fmt(b[l], "%.0f"), fmt(cg[l], "%.1f"), fmt(x[l], "%.0f"), fmt(y[l], "%.0f")
		}
	}' "$ALL" | sed 's/^\([^\t]*\t[^\t]*\t\)-\t/\1FAIL\t/' >"$SUMMARY"

# roles: reference (direct), ceiling candidates (the no-crypto rust relay: copy, splice),
# no-crypto (socat), peer (crypto), sessionkey
role_of() {
	case $1 in
	*"no tunnel"*) echo reference ;;
	"rust relay"*"no crypto"*) echo no-crypto-relay ;;
	*"no crypto"*) echo no-crypto ;;
	"sessionkey tunnel"*) echo sessionkey ;;
	*) echo peer ;;
	esac
}

SK_G=$(awk -F'\t' -v l="$HEADLINE" '$2 == l {print $3}' "$SUMMARY")
[ -n "$SK_G" ] && [ "$SK_G" != FAIL ] || die "no sessionkey measurement (see the logs above; KEEP_WORK=1 keeps $WORK)"
CEIL_G=0 CEIL_L=""
BEST_G=0 BEST_L=""
while IFS=$'\t' read -r _sec label g _runs _c _b _cg _x _y; do
	[ "$g" = FAIL ] && continue
	case $(role_of "$label") in
	no-crypto-relay) awk -v a="$g" -v b="$CEIL_G" 'BEGIN{exit !(a > b)}' && { CEIL_G=$g; CEIL_L=$label; } ;;
	peer) awk -v a="$g" -v b="$BEST_G" 'BEGIN{exit !(a > b)}' && { BEST_G=$g; BEST_L=$label; } ;;
	esac
done <"$SUMMARY"
[ -n "$BEST_L" ] || [ "$SK_PEERS" = 0 ] || die "no peer (spiped, stunnel4, ssh) was measured: see peers.sh output in $WORK"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b + 0 > 0) printf "%.2f", a / b; else printf "-" }'; }

TABLE=$WORK/table.md
{
	echo "# bench/tunnel.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): $(nproc) CPU $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), kernel $(uname -r)"
	echo "# iperf3 -t $T -P 1, receiver side, 3 hops on loopback; medians of $N rounds (peers.sh then sessionkey in each round); load average at start $LOAD0"
	echo
	echo "| path | role | Gbit/s (median) | runs | tunnel CPU % (of 1 core) | CPU % per Gbit/s | context switches per GB | syscalls per GB | system busy % (of $(($(nproc) * 100))) | / ceiling | sessionkey / this |"
	echo "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
	while IFS=$'\t' read -r _sec label g runs c b cg x y; do
		role=$(role_of "$label")
		[ "$label" = "$CEIL_L" ] && role="ceiling (best no-crypto relay)"
		[ "$label" = "$BEST_L" ] && role="best peer"
		printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" "$role" "$g" "$runs" "$c" "$cg" "$x" "$y" "$b" \
			"$(ratio "$g" "$CEIL_G")" "$(ratio "$SK_G" "$g")"
	done <"$SUMMARY"
	echo
	echo "sessionkey ($SK_SUITE): $SK_G Gbit/s; best peer: $BEST_L, $BEST_G Gbit/s; ceiling: $CEIL_L, $CEIL_G Gbit/s"
	if [ "$SK_TLS" = 1 ]; then
		tls_g=$(awk -F'\t' -v l="sessionkey tunnel, tls $SK_SUITE" '$2 == l { print $3 }' "$SUMMARY")
		stunnel_g=$(awk -F'\t' '$2 ~ /stunnel/ && $3 != "FAIL" { print $3; exit }' "$SUMMARY")
		echo "sessionkey over TLS ($SK_SUITE): ${tls_g:-FAIL} Gbit/s; stunnel4: ${stunnel_g:-none} Gbit/s"
		echo "tls-ratio-stunnel4: $(ratio "${tls_g:-0}" "${stunnel_g:-0}")"
	fi
	if [ "$SK_METRICS" = 1 ]; then
		metrics_g=$(awk -F'\t' -v l="$HEADLINE, metrics scraped every 1 s" '$2 == l { print $3 }' "$SUMMARY")
		echo "sessionkey ($SK_SUITE) with metrics scraped every 1 s: ${metrics_g:-FAIL} Gbit/s; without: $SK_G Gbit/s"
		echo "metrics-ratio-on-off: $(ratio "${metrics_g:-0}" "$SK_G")"
	fi
	chacha_g=$(awk -F'\t' -v l="sessionkey tunnel, chacha20-poly1305$CLASSIC_TAG" '$2 == l { print $3 }' "$SUMMARY")
	aes_g=$(awk -F'\t' -v l="sessionkey tunnel, aes-256-gcm$CLASSIC_TAG" '$2 == l { print $3 }' "$SUMMARY")
	if [ -n "$chacha_g" ] && [ -n "$aes_g" ]; then
		# ssh's default cipher is chacha20-poly1305@openssh.com: the same cipher pair in a peer.
		ssh_chacha=$(awk -F'\t' '$2 ~ /^ssh -L.*default cipher/ && $3 != "FAIL" { print $3; exit }' "$SUMMARY")
		ssh_aes=$(awk -F'\t' '$2 ~ /^ssh -L.*aes256-gcm/ && $3 != "FAIL" { print $3; exit }' "$SUMMARY")
		echo "chacha-ratio-aes: $(ratio "$chacha_g" "$aes_g") (sessionkey chacha20-poly1305 / aes-256-gcm); ssh: $(ratio "${ssh_chacha:-0}" "${ssh_aes:-0}") (default chacha20-poly1305 / aes256-gcm)"
	fi
	echo "total wall time: ${SECONDS}s"
} >"$TABLE"
[ -n "$OUT_MD" ] && cp "$TABLE" "$OUT_MD"
[ -n "$OUT_TSV" ] && cp "$SUMMARY" "$OUT_TSV"
cat "$TABLE"
echo "tunnel-ratio-ceiling: $(ratio "$SK_G" "$CEIL_G")"
echo "tunnel-ratio-best-peer: $(ratio "$SK_G" "$BEST_G")"
