#!/usr/bin/env bash
# Stop the single-node SLURM that tests/integration/cluster/start_slurm.sh started: cancel the jobs left in
# the queue (saying which), then slurmd, slurmctld, slurmdbd, MariaDB and munged, each by the pid
# in its pid file (SIGTERM, then SIGKILL after 20 s). Packages, configs, the accounting database
# and logs (/var/log/slurm/) stay; a later start_slurm.sh reuses them. A no-op when nothing runs.
set -uo pipefail

say() { echo "stop_slurm.sh: $*"; }
[ "$(id -u)" = 0 ] || {
  echo "stop_slurm.sh: ERROR: must run as root" >&2
  exit 1
}

# stop NAME PIDFILE: SIGTERM the pid in PIDFILE, wait up to 20 s, then SIGKILL.
stop() {
  local name=$1 pidfile=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || {
    rm -f "$pidfile"
    return 0
  }
  say "stopping $name (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) ignored SIGTERM for 20 s: SIGKILL"
    kill -KILL "$pid"
  fi
  rm -f "$pidfile"
}

if [ -s /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
  jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs still queued or running: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs || true
    for _ in $(seq 1 30); do
      [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi
stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop slurmdbd /run/slurmdbd.pid
stop mariadbd /run/mysqld/mysqld.pid
stop munged /run/munge/munged.pid
say "stopped"
