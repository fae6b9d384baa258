#!/bin/bash
# Bring up a one-node slurm on THIS host (for tests/test_slurm_integration.py), as root.
#
# Installs the Debian packages (slurmctld slurmd slurm-client munge, plus slurmdbd and
# mariadb-server so that `sacct` works), writes /etc/slurm/slurm.conf for one node described by
# `slurmd -C`, two partitions on it:
#   debug   (default, PriorityTier=1,  PreemptMode=REQUEUE, GraceTime=60)
#   urgent  (PriorityTier=10): a job here pre-empts (requeues) a running `debug` job
# JobRequeue=1 and a low MinJobAge, then starts munge, mariadb, slurmdbd, slurmctld and slurmd
# without systemd and waits until `sinfo` shows the node idle.
#
# Usage:   sudo slurm/local_cluster.sh            # install + configure + start (idempotent)
#          sudo slurm/local_cluster.sh stop       # stop the daemons it started
# Variables: ACCOUNTING=0 skips slurmdbd/mariadb (no sacct); GRACE_TIME (default 60).
# Only meant for a throw-away test machine or container: it overwrites /etc/slurm/*.conf.
set -euo pipefail

die() {
    echo "local_cluster.sh: error: $*" >&2
    exit 2
}

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages, writes /etc/slurm and starts daemons)"

ACCOUNTING=${ACCOUNTING:-1}
GRACE_TIME=${GRACE_TIME:-60}
HOST=$(hostname -s)
DB_PASS=speechkit-local

stop_all() {
    for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid; do
        if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            kill "$(cat "$pidfile")" || true
        fi
    done
    sleep 2
}

if [ "${1:-}" = "stop" ]; then
    stop_all
    exit 0
fi

# --- packages -----------------------------------------------------------------------------
pkgs=(slurmctld slurmd slurm-client munge)
[ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- munge ----------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null || die "munged did not start"
fi

# --- slurm.conf -----------------------------------------------------------------------------
stop_all
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
# first line of `slurmd -C`: NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 ... RealMemory=...
node_line=$(slurmd -C | head -n 1)
case "$node_line" in
    NodeName=*) ;;
    *) die "slurmd -C printed '$node_line'; expected 'NodeName=... CPUs=...'" ;;
esac
if [ "$ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
    acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat >/etc/slurm/slurm.conf <<EOF
# written by speechkit slurm/local_cluster.sh: one node, test use only
ClusterName=speechkit
SlurmctldHost=${HOST}
AuthType=auth/munge
SlurmUser=slurm
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=60
KillWait=30
SchedulerParameters=defer_batch=0
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
${acct}
${node_line} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=${GRACE_TIME}
PartitionName=urgent Nodes=${HOST} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF

# --- accounting (sacct) ---------------------------------------------------------------------
if [ "$ACCOUNTING" = 1 ]; then
    if ! mysqladmin ping >/dev/null 2>&1; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        (cd / && nohup mysqld_safe >/var/log/slurm/mysqld_safe.log 2>&1 &)
        for _ in $(seq 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.5; done
        mysqladmin ping >/dev/null 2>&1 || die "mariadb did not start (see /var/log/slurm/mysqld_safe.log)"
    fi
    mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=${DB_PASS}
StorageLoc=slurm_acct_db
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
EOF
    chown slurm:slurm /etc/slurm/slurmdbd.conf
    chmod 600 /etc/slurm/slurmdbd.conf
    slurmdbd
    for _ in $(seq 40); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
    sacctmgr -n list cluster format=cluster | grep -qw speechkit ||
        sacctmgr -i add cluster speechkit >/dev/null
fi

# --- slurm daemons --------------------------------------------------------------------------
slurmctld
slurmd
for _ in $(seq 60); do
    state=$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n 1 || true)
    [ "$state" = idle ] && break
    sleep 1
done
[ "$state" = idle ] || die "node ${HOST} is '${state:-unknown}' after 60 s; see /var/log/slurm/"
sinfo
echo "local_cluster.sh: slurm is up on ${HOST} (partitions debug, urgent)"
