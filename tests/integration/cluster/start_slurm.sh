#!/usr/bin/env bash
# Install and start a single-node SLURM on this machine, for the cluster tests (pytest -m cluster).
#
# As root, without systemd (a container): munged, MariaDB (accounting storage, so that `sacct`
# works: Parsl's SlurmProvider polls job states with sacct and the tests compare job ids with
# it), slurmdbd, slurmctld and slurmd, each started by hand with a pid file under /run and a log
# file under /var/log/slurm/. slurm.conf is generated from `slurmd -C` (this machine's CPUs and
# memory); one partition, default, named $LH_SLURM_PARTITION (default "debug").
#
# Idempotent: when every daemon answers already, it prints so and does nothing else; when some
# are down it starts only those. Every wait is bounded ($LH_SLURM_WAIT seconds, default 60, per
# daemon); a failure names the daemon and prints the tail of its log. Packages come from apt
# (Debian 12: Slurm 22.05) and are installed only when missing.
#
#   bash tests/integration/cluster/start_slurm.sh      # start (about 30 s to install, seconds to start)
#   bash tests/integration/cluster/stop_slurm.sh       # stop everything this script started
set -euo pipefail

CLUSTER=lambdahat
PARTITION=${LH_SLURM_PARTITION:-debug}
WAIT=${LH_SLURM_WAIT:-60}
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MYSQL_SOCK=/run/mysqld/mysqld.sock
HERE=$(cd "$(dirname "$0")" && pwd)
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)

say() { echo "start_slurm.sh: $*"; }
die() {
  echo "start_slurm.sh: ERROR: $1" >&2
  if [ -n "${2:-}" ] && [ -f "$2" ]; then
    echo "--- last lines of $2:" >&2
    tail -n 25 "$2" >&2
  fi
  exit 1
}
# wait_until SECONDS CMD...: run CMD every 0.5 s until it succeeds; fail after SECONDS.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

munge_ok() { munge -n | unmunge >/dev/null; }
mysql_ok() { mysqladmin --socket="$MYSQL_SOCK" --connect-timeout=2 ping; }
dbd_ok() { alive /run/slurmdbd.pid && timeout 10 sacctmgr -n list cluster format=cluster; }
ctld_ok() { timeout 10 scontrol ping | grep -q "is UP"; }
node_state() { timeout 10 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }
node_ok() {
  alive /run/slurmd.pid && case "$(node_state)" in idle* | mix* | alloc* | compl*) ;; *) false ;; esac
}
all_ok() {
  command -v slurmctld >/dev/null && [ -f "$CONF" ] || return 1
  NODE=$(hostname -s)
  munge_ok && mysql_ok && dbd_ok && ctld_ok && node_ok && timeout 10 sacct -X -n
} >/dev/null 2>&1

stop_hint() {
  say "logs: $LOG_DIR/ (slurmctld.log slurmd.log slurmdbd.log mariadb.log munged.log)"
  say "stop with: bash $HERE/stop_slurm.sh"
}

[ "$(id -u)" = 0 ] || die "must run as root: it installs packages with apt-get and starts daemons"
mkdir -p "$LOG_DIR"

if all_ok; then
  say "SLURM is already up (partition $PARTITION, node $(hostname -s)); nothing to do"
  stop_hint
  exit 0
fi

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
  say "installing ${missing[*]} (apt-get; log $LOG_DIR/apt.log)"
  # Packages must not try to start their services (there is no init system to do it).
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends \
        "${missing[@]}"
  } >"$LOG_DIR/apt.log" 2>&1 || rc=$?
  [ "$made_policy" = 1 ] && rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get failed (exit $rc)" "$LOG_DIR/apt.log"
}

start_munge() {
  if munge_ok 2>/dev/null; then return 0; fi
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  fi
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid \
    --log-file=/var/log/munge/munged.log </dev/null >/dev/null 2>&1 ||
    die "munged did not start" /var/log/munge/munged.log
  ln -sf /var/log/munge/munged.log "$LOG_DIR/munged.log"
  wait_until "$WAIT" munge_ok || die "munge -n | unmunge fails" /var/log/munge/munged.log
}

start_mariadb() {
  if mysql_ok >/dev/null 2>&1; then return 0; fi
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$LOG_DIR/mariadb.log" 2>&1 ||
      die "mariadb-install-db failed" "$LOG_DIR/mariadb.log"
  fi
  say "starting mariadbd (127.0.0.1 only)"
  setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --bind-address=127.0.0.1 \
    --socket="$MYSQL_SOCK" --pid-file=/run/mysqld/mysqld.pid \
    --log-error="$LOG_DIR/mariadb.log" --innodb-lock-wait-timeout=900 \
    </dev/null >>"$LOG_DIR/mariadb.log" 2>&1 &
  wait_until "$WAIT" mysql_ok || die "MariaDB did not answer within ${WAIT}s" "$LOG_DIR/mariadb.log"
}

db_password() {
  # Kept across runs: reuse the one in slurmdbd.conf when there is one.
  local pw=""
  [ -f "$DBD_CONF" ] && pw=$(sed -n 's/^StoragePass=//p' "$DBD_CONF")
  [ -n "$pw" ] || pw=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$pw"
}

write_configs() {
  local pw=$1 cpus mem node_line
  node_line=$(slurmd -C | head -n 1)
  [[ "$node_line" == NodeName=* ]] || die "slurmd -C printed no NodeName line: $node_line"
  NODE=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node_line")
  cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
  mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
  mkdir -p /etc/slurm "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
  local new
  new=$(
    cat <<EOF
# Generated by tests/integration/cluster/start_slurm.sh: a single-node test cluster, reached on 127.0.0.1
# whatever the hostname resolves to. No cgroup plugin works in this container, hence
# proctrack/linuxproc.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=60
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  )
  if [ ! -f "$CONF" ] || [ "$new" != "$(cat "$CONF")" ]; then
    if alive /run/slurmctld.pid || alive /run/slurmd.pid; then
      say "slurm.conf changed: restarting slurmctld and slurmd"
      for d in slurmd slurmctld; do alive /run/$d.pid && kill "$(cat /run/$d.pid)"; done
      wait_until 30 bash -c '! kill -0 $(cat /run/slurmd.pid /run/slurmctld.pid 2>/dev/null) 2>/dev/null' || true
    fi
    echo "$new" >"$CONF"
  fi
  (umask 077 && cat >"$DBD_CONF.new") <<EOF
# Generated by tests/integration/cluster/start_slurm.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$pw
StorageLoc=slurm_acct_db
EOF
  mv "$DBD_CONF.new" "$DBD_CONF"
  chown root:root "$DBD_CONF" && chmod 600 "$DBD_CONF"
}

setup_database() {
  local pw=$1
  mysql --socket="$MYSQL_SOCK" <<EOF || die "creating the accounting database failed" "$LOG_DIR/mariadb.log"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
  if dbd_ok >/dev/null 2>&1; then return 0; fi
  say "starting slurmdbd"
  slurmdbd </dev/null >>"$LOG_DIR/slurmdbd.log" 2>&1 || die "slurmdbd did not start" "$LOG_DIR/slurmdbd.log"
  wait_until "$WAIT" dbd_ok || die "slurmdbd did not answer within ${WAIT}s" "$LOG_DIR/slurmdbd.log"
  if ! timeout 10 sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    timeout 30 sacctmgr -i add cluster "$CLUSTER" >/dev/null ||
      die "sacctmgr add cluster $CLUSTER failed" "$LOG_DIR/slurmdbd.log"
  fi
}

start_slurmctld() {
  if ctld_ok 2>/dev/null; then return 0; fi
  say "starting slurmctld"
  slurmctld </dev/null >>"$LOG_DIR/slurmctld.log" 2>&1 || die "slurmctld did not start" "$LOG_DIR/slurmctld.log"
  wait_until "$WAIT" ctld_ok || die "slurmctld did not answer within ${WAIT}s" "$LOG_DIR/slurmctld.log"
}

start_slurmd() {
  if ! alive /run/slurmd.pid; then
    say "starting slurmd"
    slurmd </dev/null >>"$LOG_DIR/slurmd.log" 2>&1 || die "slurmd did not start" "$LOG_DIR/slurmd.log"
  fi
  if ! wait_until "$WAIT" node_ok; then
    # A node left down or drained by an earlier run: resume it once.
    timeout 10 scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    wait_until 15 node_ok ||
      die "node $NODE is '$(node_state)', not idle, after ${WAIT}s" "$LOG_DIR/slurmd.log"
  fi
}

t0=$SECONDS
install_packages
start_munge
start_mariadb
pw=$(db_password)
write_configs "$pw"
setup_database "$pw"
start_slurmdbd
start_slurmctld
start_slurmd
out=$(timeout 60 srun -N 1 -n 1 -t 1 hostname 2>&1) ||
  die "srun hostname failed: $out" "$LOG_DIR/slurmd.log"
timeout 10 sacct -X -n >/dev/null || die "sacct does not work" "$LOG_DIR/slurmdbd.log"
say "SLURM is up after $((SECONDS - t0))s: partition $PARTITION, node $NODE ($(sinfo -h -o '%c CPUs, %m MB')), srun ran on $out"
stop_hint
