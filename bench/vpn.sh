#!/usr/bin/env bash
# bench/vpn.sh — iperf3 through `sessionkey vpn` beside wireguard-go, boringtun and plain
# veth (../shared/bench/peers.sh, section B), in one run.
#
#   netns A: iperf3 -c 10.201.1.2 -> [sessionkey vpn A] -> veth (UDP) -> [sessionkey vpn B]
#   netns B: iperf3 -s
#
# The peers are measured by peers.sh itself (SECTIONS=B, one stream, machine-default sysctls:
# TUNE_UDP_RMEM=0), and sessionkey the same way: two fresh namespaces joined by a veth pair,
# iperf3 -t T -P 1 -J, receiver-side rate. N rounds, each one peers.sh run followed by one
# sessionkey run, so they see the same load; figures are medians over the rounds.
#
# Prints a markdown table, the UDP receive-buffer drops of the sessionkey runs, and as the
# last line of standard output
#   vpn-ratio-best-peer: R
# where R = sessionkey Gbit/s / the better of wireguard-go and boringtun, two decimals.
#
# Usage: sudo bench/vpn.sh          (root: namespaces, TUN, apt-get)
# Env knobs (defaults):
#   T=5              iperf3 -t seconds per configuration (>= 4)
#   N=3              rounds (medians over them)
#   SK_SUITE=aes-256-gcm   suite of the sessionkey VPN
#   SK_OFFLOAD=true  TUN offloads and UDP GSO/GRO (false: plain reads and writes)
#   SESSIONKEY_BIN=  use this binary instead of building target/release/sessionkey
#   SHARED=          the shared/ folder (default: ../../shared from this script)
#   OUT_MD=file      also write the table to this file
#   KEEP_WORK=1      keep the temp dir (logs, iperf3 JSON, peers.sh tables)
# Everything it starts it stops (trap on EXIT/INT/TERM); namespaces skvb-* are removed.
set -euo pipefail

T=${T:-5}
N=${N:-3}
SK_SUITE=${SK_SUITE:-aes-256-gcm}
SK_OFFLOAD=${SK_OFFLOAD:-true}
OUT_MD=${OUT_MD:-}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$HERE/../.." && pwd)/shared}
PEERS=$SHARED/bench/peers.sh

log() { printf '[vpn-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

[ -f "$PEERS" ] || die "peers.sh not found at $PEERS (set SHARED=/path/to/shared)"
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, TUN, apt-get)"
[ "$T" -ge 4 ] 2>/dev/null || die "T must be an integer >= 4"
[ "$N" -ge 1 ] 2>/dev/null || die "N must be an integer >= 1"

NS_A=skvb-a
NS_B=skvb-b
VETH_A=skvb-va
VETH_B=skvb-vb
IP_A=10.201.0.1
IP_B=10.201.0.2
TUN_A=10.201.1.1
TUN_B=10.201.1.2
PORT=51840

WORK=$(mktemp -d -t sk-vpn-bench.XXXXXX)
chmod 700 "$WORK"
PIDS=()

stop_pid() { # TERM, wait up to 3 s, then KILL
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 1 60); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null || true
}

netns_down() {
	ip netns del "$NS_A" 2>/dev/null || true
	ip netns del "$NS_B" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	local p
	for p in "${PIDS[@]:-}"; do [ -n "$p" ] && stop_pid "$p"; done
	netns_down
	if [ "${KEEP_WORK:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

# ---------------------------------------------------------------- tools
missing=()
for pair in iperf3:iperf3 jq:jq ip:iproute2 ping:iputils-ping wireguard-go:wireguard-go wg:wireguard-tools; do
	command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed"
fi

if [ -z "${SESSIONKEY_BIN:-}" ]; then
	log "building sessionkey (release)"
	cargo build --release -q -p sessionkey-cli --manifest-path "$REPO/Cargo.toml" >&2
	SESSIONKEY_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/sessionkey
fi
[ -x "$SESSIONKEY_BIN" ] || die "no sessionkey binary at $SESSIONKEY_BIN"

"$SESSIONKEY_BIN" keygen -q -C bench-a -o "$WORK/a.key" >/dev/null
"$SESSIONKEY_BIN" keygen -q -C bench-b -o "$WORK/b.key" >/dev/null
KEY_A=$(awk '{print $2}' "$WORK/a.key.pub")
KEY_B=$(awk '{print $2}' "$WORK/b.key.pub")
for side in a b; do
	if [ $side = a ]; then addr=$TUN_A peer=$KEY_B ep=$IP_B allowed=$TUN_B; else addr=$TUN_B peer=$KEY_A ep=$IP_A allowed=$TUN_A; fi
	cat >"$WORK/skvb$side.toml" <<-EOF
		[interface]
		private_key_file = "$side.key"
		address = ["$addr/24"]
		listen_port = $PORT
		suite = "$SK_SUITE"
		offload = $SK_OFFLOAD

		[[peer]]
		public_key = "$peer"
		endpoint = "$ep:$PORT"
		allowed_ips = ["$allowed/32"]
	EOF
done

udp_rcvbuf_errors() { # the namespace's UdpRcvbufErrors
	ip netns exec "$1" awk '/^Udp:/{ if (!h) { for (i=1;i<=NF;i++) if ($i=="RcvbufErrors") c=i; h=1 } else { print $c; exit } }' /proc/net/snmp
}

# One sessionkey measurement: Gbit/s, TCP retransmits and UDP receive-buffer drops, tab-separated.
measure_sessionkey() {
	local round=$1
	netns_down
	ip netns add "$NS_A"
	ip netns add "$NS_B"
	ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B"
	ip -n "$NS_A" addr add "$IP_A/24" dev "$VETH_A"
	ip -n "$NS_B" addr add "$IP_B/24" dev "$VETH_B"
	local ns
	for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
	ip -n "$NS_A" link set "$VETH_A" up
	ip -n "$NS_B" link set "$VETH_B" up
	ip netns exec "$NS_A" "$SESSIONKEY_BIN" vpn up "$WORK/skvba.toml" 2>"$WORK/vpn-a-$round.log" &
	local pa=$!
	ip netns exec "$NS_B" "$SESSIONKEY_BIN" vpn up "$WORK/skvbb.toml" 2>"$WORK/vpn-b-$round.log" &
	local pb=$!
	PIDS+=("$pa" "$pb")
	local i
	for i in $(seq 1 100); do
		ip -n "$NS_A" link show skvba >/dev/null 2>&1 && ip -n "$NS_B" link show skvbb >/dev/null 2>&1 && break
		sleep 0.05
	done
	ip netns exec "$NS_A" ping -c 3 -i 0.2 -W 2 "$TUN_B" >/dev/null || {
		log "sessionkey: no ping through the VPN: $(tail -3 "$WORK/vpn-a-$round.log")"
		stop_pid "$pa"; stop_pid "$pb"; netns_down
		printf 'FAIL\t-\t-\n'
		return 0
	}
	ip netns exec "$NS_B" iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
	local ps=$!
	PIDS+=("$ps")
	for i in $(seq 1 100); do
		ip netns exec "$NS_B" ss -Hltn 'sport = :5201' | grep -q . && break
		sleep 0.05
	done
	local drops0
	drops0=$(($(udp_rcvbuf_errors "$NS_A") + $(udp_rcvbuf_errors "$NS_B")))
	local json=$WORK/sk-$round.json
	ip netns exec "$NS_A" iperf3 -c "$TUN_B" -p 5201 -t "$T" -P 1 -J >"$json" 2>"$WORK/sk-$round.err" || true
	local drops1
	drops1=$(($(udp_rcvbuf_errors "$NS_A") + $(udp_rcvbuf_errors "$NS_B")))
	"$SESSIONKEY_BIN" vpn show skvba --json >"$WORK/show-$round.json" 2>/dev/null || true
	stop_pid "$ps"
	"$SESSIONKEY_BIN" vpn down skvba >/dev/null 2>&1 || stop_pid "$pa"
	stop_pid "$pa"
	stop_pid "$pb"
	netns_down
	local gbps=FAIL retr=-
	if jq -e '.end.sum_received.bits_per_second' "$json" >/dev/null 2>&1; then
		gbps=$(jq '.end.sum_received.bits_per_second / 1e9' "$json" | awk '{printf "%.2f", $1}')
		retr=$(jq '.end.sum_sent.retransmits // 0' "$json")
	else
		log "sessionkey: iperf3 failed: $(head -c 300 "$WORK/sk-$round.err")"
	fi
	printf '%s\t%s\t%s\n' "$gbps" "$retr" "$((drops1 - drops0))"
}

# ---------------------------------------------------------------- rounds
: >"$WORK/rows.tsv" # kind \t round \t gbps \t retrans \t label
for round in $(seq 1 "$N"); do
	log "round $round/$N: peers.sh (veth, wireguard-go, boringtun)"
	SECTIONS=B PAR_B=0 TUNE_UDP_RMEM=0 T=$T OUT_TSV="$WORK/peers-$round.tsv" \
		bash "$PEERS" >"$WORK/peers-$round.md" 2>"$WORK/peers-$round.log" || log "peers.sh failed (see KEEP_WORK=1)"
	if [ -f "$WORK/peers-$round.tsv" ]; then
		awk -F'\t' -v r="$round" '{
			kind = ($2 ~ /^veth/) ? "veth" : ($2 ~ /^wireguard-go/) ? "wggo" : ($2 ~ /^boringtun/) ? "boringtun" : "";
			if (kind != "" && $3 == 1) printf "%s\t%s\t%s\t%s\t%s\n", kind, r, $4, $5, $2 }' \
			"$WORK/peers-$round.tsv" >>"$WORK/rows.tsv"
	fi
	log "round $round/$N: sessionkey vpn"
	IFS=$'\t' read -r gbps retr drops < <(measure_sessionkey "$round")
	printf 'sessionkey\t%s\t%s\t%s\tsessionkey vpn (%s, offload %s)\n' "$round" "$gbps" "$retr" "$SK_SUITE" "$SK_OFFLOAD" >>"$WORK/rows.tsv"
	printf '%s\n' "$drops" >>"$WORK/drops.txt"
	log "round $round: sessionkey $gbps Gbit/s, $retr retransmits, $drops UDP receive-buffer drops"
done

median() { # median of the numeric arguments (FAIL ignored); empty if none
	printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g | awk '{a[NR]=$1} END{ if (NR==0) exit; if (NR%2) printf "%.2f", a[(NR+1)/2]; else printf "%.2f", (a[NR/2]+a[NR/2+1])/2 }'
}
values() { awk -F'\t' -v k="$1" '$1==k {print $3}' "$WORK/rows.tsv"; }
label() { awk -F'\t' -v k="$1" '$1==k {l=$5} END{print l}' "$WORK/rows.tsv"; }
retrans() { awk -F'\t' -v k="$1" '$1==k && $4 ~ /^[0-9]+$/ {s+=$4; n++} END{ if (n) printf "%.0f", s/n; else print "-" }' "$WORK/rows.tsv"; }

declare -A MED
for k in veth wggo boringtun sessionkey; do
	# shellcheck disable=SC2046
	MED[$k]=$(median $(values "$k"))
done
SK=${MED[sessionkey]}
[ -n "$SK" ] || die "sessionkey vpn could not be measured (KEEP_WORK=1 keeps the logs)"
BEST=""
BEST_KIND=""
for k in wggo boringtun; do
	v=${MED[$k]}
	[ -n "$v" ] || continue
	if [ -z "$BEST" ] || awk -v a="$v" -v b="$BEST" 'BEGIN{exit !(a>b)}'; then BEST=$v BEST_KIND=$k; fi
done
[ -n "$BEST" ] || die "neither wireguard-go nor boringtun could be measured (see peers.sh logs with KEEP_WORK=1)"

DROPS=$(awk '{s+=$1} END{print s+0}' "$WORK/drops.txt")
{
	echo "# bench/vpn.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): $(nproc) CPU, kernel $(uname -r); iperf3 -t $T -P 1, median of $N round(s), receiver side"
	echo
	echo "| path | Gbit/s | TCP retransmits (mean) | sessionkey / this |"
	echo "|---|---:|---:|---:|"
	for k in veth wggo boringtun sessionkey; do
		v=${MED[$k]}
		[ -n "$v" ] || { echo "| $k | FAIL | - | - |"; continue; }
		ratio=$(awk -v s="$SK" -v v="$v" 'BEGIN{ if (v>0) printf "%.2f", s/v; else print "-" }')
		echo "| $(label "$k") | $v | $(retrans "$k") | $ratio |"
	done
	echo
	echo "sessionkey UDP receive-buffer drops (UdpRcvbufErrors, both namespaces, all rounds): $DROPS"
} >"$WORK/table.md"
cat "$WORK/table.md"
[ -n "$OUT_MD" ] && cp "$WORK/table.md" "$OUT_MD"
echo "vpn-ratio-vs-veth: $(awk -v s="$SK" -v v="${MED[veth]:-0}" 'BEGIN{ if (v>0) printf "%.2f", s/v; else print "-" }')"
echo "vpn-ratio-best-peer: $(awk -v s="$SK" -v b="$BEST" 'BEGIN{printf "%.2f", s/b}')"
