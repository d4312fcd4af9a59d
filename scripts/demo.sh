#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs a 3-node weft
# cluster on this machine — two weftd nodes and one kernel-flannel node (the Linux
# kernel's vxlan, programmed like flanneld) — with two pods per node: one created by
# containerd's `ctr run --cni`, one the way the kubelet creates pods, through the CRI
# (RunPodSandbox on the node's own containerd, whose CRI plugin runs the CNI chain:
# weft, portmap, bandwidth). Prints the leases, a pod-to-pod reachability matrix, one
# iperf3 figure and a packet's path; exits 0 only if every pod reached every other pod.
# Everything lives in network namespaces and is removed on exit.
#
# Environment: WEFT_DEMO_IPERF_SECONDS (default 5), WEFT_DEMO_SKIP_SETUP=1,
# WEFT_DEMO_SKIP_BUILD=1 (use the binaries already built), WEFT_DEMO_PROFILE=debug
# (build and run target/debug instead of target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: must run as root (network namespaces, containerd)" >&2
  exit 1
fi

logs="$root/target/demo"
mkdir -p "$logs"
profile="${WEFT_DEMO_PROFILE:-release}"
case "$profile" in
  release) build_args=(--release) ;;
  debug) build_args=() ;;
  *) echo "demo.sh: WEFT_DEMO_PROFILE=$profile: expected release or debug" >&2; exit 1 ;;
esac
bin="$root/target/$profile"
lab="$bin/weft-lab"
prefix="demo$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')"
iperf_seconds="${WEFT_DEMO_IPERF_SECONDS:-5}"
step=0
steps=8
lab_up=0

progress() { step=$((step + 1)); printf '[%d/%d] %s\n' "$step" "$steps" "$*"; }
# Runs a command with its output in a log file; on failure shows the log's tail.
logged() {
  local log="$1"; shift
  if ! "$@" >"$log" 2>&1; then
    echo "      FAILED: $* (log: $log)"
    tail -n 20 "$log" | sed 's/^/      | /'
    return 1
  fi
}

teardown() {
  local rc=$?
  if [ "$lab_up" = 1 ]; then
    # Keep the daemons' logs: the lab's directory goes away with the lab.
    local keep="$logs/$prefix"
    mkdir -p "$keep"
    for f in /tmp/weft-lab-"$prefix"/n*/weftd.log /tmp/weft-lab-"$prefix"/etcd/etcd.log \
             /tmp/weft-lab-"$prefix"/containerd/containerd.log \
             /tmp/weft-lab-"$prefix"/n*/containerd/containerd.log; do
      [ -f "$f" ] || continue
      local rel=${f#/tmp/weft-lab-"$prefix"/}
      cp "$f" "$keep/${rel//\//-}" 2>/dev/null || true
    done
    if "$lab" down --prefix "$prefix" >"$logs/down.log" 2>&1; then
      left=$(ip netns list | grep -c "^$prefix-" || true)
      procs=$(pgrep -c -f "/tmp/weft-lab-$prefix/" || true)
      echo "teardown: lab $prefix removed (namespaces left: $left, processes left: $procs); daemon logs kept in $keep"
      [ "$left" = 0 ] && [ "$procs" = 0 ] || rc=1
    else
      echo "teardown: FAILED, see $logs/down.log"
      rc=1
    fi
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

started=$(date +%s)

progress "setup: Debian packages (scripts/setup.sh)"
if [ "${WEFT_DEMO_SKIP_SETUP:-0}" != 1 ]; then
  logged "$logs/setup.log" ./scripts/setup.sh
fi

progress "build: cargo build ${build_args[*]:+${build_args[*]} }--workspace --bins (log: $logs/build.log)"
if [ "${WEFT_DEMO_SKIP_BUILD:-0}" != 1 ]; then
  logged "$logs/build.log" cargo build "${build_args[@]}" --workspace --bins
fi
for b in weftd weftctl weft weft-lab; do
  [ -x "$bin/$b" ] || { echo "      missing $bin/$b"; exit 1; }
done
built=$(date +%s)

progress "lab $prefix: etcd, nodes n1 n2 (weftd) and n3 (kernel-flannel) in network namespaces"
lab_up=1
logged "$logs/up.log" "$lab" up --nodes 3 --kernel-nodes 1 --prefix "$prefix"
sed 's/^/      /' "$logs/up.log"

progress "pods: two per node through the weft CNI plugin — pXa by ctr run --cni, pXb through the CRI as the kubelet does"
pods=(p1a p1b p2a p2b p3a p3b)
declare -A ip_of node_of
for pod in "${pods[@]}"; do
  node="n${pod:1:1}"
  # pXb: RunPodSandbox over the CRI gRPC API on the node's own containerd (started in
  # the node's namespace on first use), with a hostPort and the pod annotations the
  # kubelet passes; containerd calls weft, portmap and bandwidth.
  how=(); via="ctr run --cni"
  if [ "${pod:2:1}" = b ]; then
    how=(--cri --namespace demo --host-port "1808${pod:1:1}:8080")
    via="CRI RunPodSandbox, namespace demo, hostPort 1808${pod:1:1}"
  fi
  out=$("$lab" pod add --prefix "$prefix" "${how[@]}" "$node" "$pod" 2>>"$logs/pods.log") || {
    echo "      FAILED to create $pod on $node (log: $logs/pods.log)"; tail -n 5 "$logs/pods.log" | sed 's/^/      | /'; exit 1; }
  ip_of[$pod]=$(awk '{print $2}' <<<"$out")
  node_of[$pod]=$node
  printf '      %-4s %-13s on %s  (%s)\n' "$pod" "${ip_of[$pod]}" "$node" "$via"
done
# What weft recorded for a CRI pod: its IPAM record names the sandbox and the pod that
# containerd's CRI passed in CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID).
record="/tmp/weft-lab-$prefix/n1/cni-ipam/weft/${ip_of[p1b]}"
if [ -f "$record" ]; then
  printf '      weft IPAM record of p1b (%s): %s\n' "${ip_of[p1b]}" "$(tr '\r\n' '  ' <"$record" | sed 's/  */ | /g')"
fi
# The kernel-flannel node learns about leases from etcd like flanneld does.
"$lab" sync --prefix "$prefix" >>"$logs/pods.log" 2>&1

progress "leases in etcd (weftctl leases)"
"$lab" exec --prefix "$prefix" n1 -- "$bin/weftctl" leases --etcd-endpoints http://192.0.2.254:2379 \
  2>>"$logs/weftctl.log" | sed 's/^/      /' || echo "      (weftctl leases failed, log: $logs/weftctl.log)"

progress "reachability: ping from every pod to every other pod"
all_ok=1
# Cells are written literally: printf pads by bytes, and ✔/✘ are 3 bytes wide.
printf '      from\\to'
for dst in "${pods[@]}"; do printf ' %s ' "$dst"; done
printf '\n'
for src in "${pods[@]}"; do
  printf '      %s    ' "$src"
  for dst in "${pods[@]}"; do
    if [ "$src" = "$dst" ]; then printf '  ·  '; continue; fi
    if "$lab" exec --prefix "$prefix" "$src" -- ping -c1 -w3 -i0.2 -q "${ip_of[$dst]}" >/dev/null 2>&1; then
      printf '  ✔  '
    else
      printf '  ✘  '; all_ok=0
    fi
  done
  printf '\n'
done

progress "throughput: iperf3, one TCP stream, p1a (n1, weftd) -> p2a (n2, weftd), ${iperf_seconds}s"
server_timeout=$((iperf_seconds + 20))
"$lab" exec --prefix "$prefix" p2a -- timeout "$server_timeout" iperf3 -s -1 >"$logs/iperf3-server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 50); do
  "$lab" exec --prefix "$prefix" p2a -- ss -ltn 2>/dev/null | grep -q ':5201 ' && break
  sleep 0.1
done
if "$lab" exec --prefix "$prefix" p1a -- timeout "$server_timeout" iperf3 -c "${ip_of[p2a]}" -t "$iperf_seconds" -f g \
     >"$logs/iperf3.log" 2>&1; then
  gbits=$(awk '/receiver/ { for (i = 1; i < NF; i++) if ($(i+1) == "Gbits/sec") print $i }' "$logs/iperf3.log" | tail -n1)
  echo "      ${gbits:-?} Gbit/s pod-to-pod across weft's userspace VXLAN (log: $logs/iperf3.log)"
else
  echo "      iperf3 failed (log: $logs/iperf3.log)"
fi
wait "$server_pid" 2>/dev/null || true

progress "packet path p1a -> p3a (weftctl trace, in n1)"
if "$bin/weftctl" trace --help >/dev/null 2>&1; then
  "$lab" exec --prefix "$prefix" n1 -- "$bin/weftctl" trace --from "$prefix-p1a" --to "${ip_of[p3a]}" \
    --etcd-endpoints http://192.0.2.254:2379 --subnet-file "/tmp/weft-lab-$prefix/n1/subnet.env" \
    2>>"$logs/weftctl.log" | sed 's/^/      /' || echo "      (trace reported a broken path, log: $logs/weftctl.log)"
else
  echo "      skipped: this weftctl has no trace subcommand yet"
fi

finished=$(date +%s)
echo
echo "lab time: $((finished - built)) s after the build; logs in $logs"
if [ "$all_ok" = 1 ]; then
  echo "RESULT: every pod reached every other pod ✔"
  exit 0
fi
echo "RESULT: some pods could not reach each other ✘"
exit 1
