#!/usr/bin/env bash
# Stop the one-node SLURM started by slurm-up.sh: slurmd, slurmctld, munged, by their pid files;
# remove the configuration it wrote (only if it is ours) and its state directory.
set -uo pipefail
STATE=${SLURM_LOCAL_DIR:-/var/tmp/cxrgen-slurm}
CONF_DIR=/etc/slurm
MARKER="# written by cxrgen tests/cluster/slurm-up.sh"

stop() {  # stop <pidfile>: TERM, wait up to 10 s, then KILL
    local pidfile=$1 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
}

stop "$STATE/slurmd.pid"
stop "$STATE/slurmctld.pid"
if [ "${KEEP_MUNGE:-0}" != 1 ]; then stop /run/munge/munged.pid; fi
for f in slurm.conf gres.conf; do
    if [ -e "$CONF_DIR/$f" ] && grep -qF "$MARKER" "$CONF_DIR/$f"; then rm -f "$CONF_DIR/$f"; fi
done
rm -rf "$STATE"
echo "slurm-down.sh: stopped"
