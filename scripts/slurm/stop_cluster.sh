#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/slurm/start_cluster.sh: cancels its jobs, then stops
# slurmd, slurmctld and munged by their pid files. Safe to run when nothing is running.
# Knobs (environment):
#   SLURM_ONLY=1  stop only the SLURM daemons, keep jobs and munged (start_cluster.sh uses it to restart)
#   PURGE=1       also remove the packages, configuration, state and logs (back to a clean machine)
set -uo pipefail
t_start=$(date +%s.%N)
RUN=/run/slurm
[ "$(id -u)" = 0 ] || { echo "stop_cluster.sh: error: must run as root" >&2; exit 1; }

stop_pidfile() {  # $1 = pid file, $2 = name: SIGTERM, wait up to 10 s, then SIGKILL
  local pid
  if [ -s "$1" ] && pid=$(cat "$1") && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; echo "killed $2 (pid $pid)"; else echo "stopped $2 (pid $pid)"; fi
  fi
  rm -f "$1"
}

if [ "${SLURM_ONLY:-0}" != 1 ] && [ -s "$RUN/slurmctld.pid" ] && kill -0 "$(cat "$RUN/slurmctld.pid")" 2>/dev/null; then
  # cancel every job so that no job processes outlive the cluster
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// }" ]; then
    echo "cancelling jobs: $jobs"
    scancel $jobs 2>/dev/null
    for _ in $(seq 50); do [ -z "$(squeue -h -t R,CG -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
stop_pidfile "$RUN/slurmd.pid" slurmd
stop_pidfile "$RUN/slurmctld.pid" slurmctld
[ "${SLURM_ONLY:-0}" = 1 ] && exit 0
stop_pidfile /run/munge/munged.pid munged

if [ "${PURGE:-0}" = 1 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq slurm-wlm slurmctld slurmd slurm-client \
    slurm-wlm-basic-plugins munge libmunge2 >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get autoremove -y -qq >/dev/null 2>&1
  rm -rf /etc/slurm /var/lib/slurm /var/log/slurm "$RUN" /etc/munge /var/lib/munge /var/log/munge /run/munge
  echo "purged SLURM and munge (packages, configuration, state, logs)"
fi
awk -v t0="$t_start" -v t1="$(date +%s.%N)" 'BEGIN {printf "SLURM cluster stopped in %.1f s\n", t1 - t0}'
