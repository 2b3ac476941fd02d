#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine for trying profiles/slurm and for CI
# (tests/test_slurm.py). Debian/Ubuntu, as root. Idempotent: a second call reuses what is running.
#
#   sudo bash tests/cluster/slurm-up.sh     # installs slurmctld slurmd slurm-client munge if absent
#   sinfo; squeue                           # partitions `cpu` (default) and `gpu`, one node, 2 fake GPUs
#   sudo bash tests/cluster/slurm-down.sh   # stops the daemons (by pid file) and removes the config
#
# The node: CPUs=2, RealMemory = 90% of this machine's memory, Gres=gpu:fake:2. The two "GPUs" are
# distinct symlinks to /dev/null (SLURM drops a GPU gres without a File=), so jobs asking for
# --gpus=N really get N of them allocated (CUDA_VISIBLE_DEVICES, SLURM_JOB_GPUS) but no device.
# No slurmdbd: MinJobAge is large so that finished jobs stay visible to `squeue`, which the
# profile's `slurm-status-command: squeue` polls (sacct needs accounting).
# Daemons run in the foreground of nohup (no systemd), logs and state in $SLURM_LOCAL_DIR.
set -euo pipefail

STATE=${SLURM_LOCAL_DIR:-/var/tmp/cxrgen-slurm}
CONF_DIR=/etc/slurm
MARKER="# written by cxrgen tests/cluster/slurm-up.sh"

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm-up.sh: must run as root (it installs packages and starts munged/slurmctld/slurmd)" >&2
    exit 2
fi

need_install=0
for bin in munged slurmctld slurmd sbatch squeue scontrol; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need_install=1
done
if [ "$need_install" -eq 1 ]; then
    command -v apt-get >/dev/null 2>&1 || { echo "slurm-up.sh: apt-get not available" >&2; exit 3; }
    echo "slurm-up.sh: installing slurmctld slurmd slurm-client munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
export PATH="/usr/sbin:/sbin:$PATH"

HOST=$(hostname -s)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$STATE"/{ctld,d,dev,log}

# --- configuration (never overwrite a slurm.conf that is not ours) ---
if [ -e "$CONF_DIR/slurm.conf" ] && ! grep -qF "$MARKER" "$CONF_DIR/slurm.conf"; then
    echo "slurm-up.sh: $CONF_DIR/slurm.conf exists and was not written by this script; refusing to replace it" >&2
    exit 4
fi
mkdir -p "$CONF_DIR"
for i in 0 1; do ln -sfn /dev/null "$STATE/dev/fakegpu$i"; done
cat > "$CONF_DIR/slurm.conf" <<CONF
$MARKER
ClusterName=cxrgen
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# report the node as configured here (CPUs=2) whatever the machine has
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
# finished jobs stay in slurmctld (and so in squeue) for an hour: squeue-based status polling
MinJobAge=3600
KillWait=10
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=2 RealMemory=$MEM_MB Gres=gpu:fake:2 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
CONF
cat > "$CONF_DIR/gres.conf" <<CONF
$MARKER
NodeName=$HOST Name=gpu Type=fake File=$STATE/dev/fakegpu0
NodeName=$HOST Name=gpu Type=fake File=$STATE/dev/fakegpu1
CONF

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- munged ---
MUNGE_PID=/run/munge/munged.pid
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile /etc/munge/munge.key; \
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
fi
if ! alive "$MUNGE_PID"; then
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
fi
for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n </dev/null | unmunge >/dev/null || { echo "slurm-up.sh: munged does not answer" >&2; exit 5; }

# --- slurmctld, slurmd (they daemonise and write the pid files named in slurm.conf) ---
if ! alive "$STATE/slurmctld.pid"; then
    slurmctld
fi
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
if ! alive "$STATE/slurmd.pid"; then
    slurmd
fi
# wait for the node to register and come up idle (or in use, when re-run under load)
state=""
for _ in $(seq 150); do
    state=$(sinfo -h -N -o %t -n "$HOST" 2>/dev/null | head -1)
    case "$state" in idle|mix|alloc) break ;; esac
    sleep 0.2
done
case "$state" in
    idle|mix|alloc) ;;
    *) echo "slurm-up.sh: node $HOST is '$state', not up; see $STATE/log/" >&2
       scontrol show node "$HOST" >&2 || true
       tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
       exit 6 ;;
esac
echo "slurm-up.sh: cluster cxrgen up: node $HOST (CPUs=2, RealMemory=${MEM_MB}M, gpu:fake:2), partitions cpu gpu; state in $STATE"
