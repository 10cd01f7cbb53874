#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine, for testing the workflow's SLURM profile.
#
# Debian/Ubuntu, root, no systemd needed: installs the Debian packages (slurm-wlm, slurmctld, slurmd,
# slurm-client, munge) when missing, writes /etc/slurm/slurm.conf + gres.conf, starts munged, slurmctld
# and slurmd by hand and waits until the node accepts jobs. The node offers FAKE_GPUS "GPUs": character
# devices that SLURM schedules like real GPUs (--gpus=1 allocates one, sets CUDA_VISIBLE_DEVICES), so a
# CPU-only machine can check that GPU rules ask for GPUs. No accounting daemon (slurmdbd): `sacct` does
# not work here, which is why the profile polls job states with squeue.
#
# Safe to run again: a running cluster with the same configuration is left alone; a changed
# configuration (other FAKE_GPUS, MIN_JOB_AGE, ...) restarts the SLURM daemons.
#
# Usage:   sudo bash scripts/slurm/start_cluster.sh        then   sbatch / srun / snakemake --profile slurm
#          sudo bash scripts/slurm/stop_cluster.sh         to stop it again
# Knobs (environment):
#   FAKE_GPUS=1      number of fake GPUs on the node (0 = none)
#   MIN_JOB_AGE=300  seconds slurmctld remembers a finished job; squeue-based polling needs it to be
#                    >= 3 x the profile's slurm-init-seconds-before-status-checks
#   PARTITION=debug  name of the (default) partition
#   NODE_CPUS        CPUs offered (default: all, `nproc`)
set -euo pipefail

t_start=$(date +%s.%N)
FAKE_GPUS=${FAKE_GPUS:-1}
MIN_JOB_AGE=${MIN_JOB_AGE:-300}
PARTITION=${PARTITION:-debug}
NODE_CPUS=${NODE_CPUS:-$(nproc)}
NODE=$(hostname -s)
LOGS=/var/log/slurm
RUN=/run/slurm
PACKAGES=(slurm-wlm slurmctld slurmd slurm-client munge)

die() { echo "start_cluster.sh: error: $*" >&2; exit 1; }
die_logs() {  # a daemon failed: show the end of its logs
  echo "start_cluster.sh: error: $*" >&2
  for f in "$LOGS/slurmctld.log" "$LOGS/slurmd.log"; do
    [ -s "$f" ] && { echo "--- last lines of $f:" >&2; tail -n 15 "$f" >&2; }
  done
  echo "(full logs: $LOGS/slurmctld.log, $LOGS/slurmd.log; munge: /var/log/munge/munged.log)" >&2
  exit 1
}
is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }   # $1 = pid file

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts system daemons)"
is_int "$FAKE_GPUS" || die "FAKE_GPUS must be a non-negative integer, got '$FAKE_GPUS'"
is_int "$MIN_JOB_AGE" || die "MIN_JOB_AGE must be a non-negative integer (seconds), got '$MIN_JOB_AGE'"
is_int "$NODE_CPUS" && [ "$NODE_CPUS" -ge 1 ] || die "NODE_CPUS must be a positive integer, got '$NODE_CPUS'"

# --- packages --------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "SLURM is not installed and apt-get is missing: install ${PACKAGES[*]}"
  echo "installing ${PACKAGES[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-cache policy slurmctld 2>/dev/null | grep -q 'Candidate: [0-9]' || apt-get update -qq \
    || die "apt-get update failed"
  # Package scripts must not try to start services (no systemd/init here): a policy-rc.d that says no.
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    own_policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$own_policy" && chmod 755 "$own_policy"
    trap 'rm -f "$own_policy"' EXIT
  fi
  install() { apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" > /tmp/slurm_apt.log 2>&1; }
  # stale package lists (404 on download): refresh them once and try again
  install || { apt-get update -qq && install; } \
    || { tail -n 20 /tmp/slurm_apt.log >&2; die "apt-get install ${PACKAGES[*]} failed (log: /tmp/slurm_apt.log)"; }
  if [ -n "$own_policy" ]; then rm -f "$own_policy"; trap - EXIT; fi
fi

# --- munge (authentication between the SLURM commands and daemons) ---------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || head -c 1024 /dev/urandom > /etc/munge/munge.key
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key && chmod 755 /run/munge
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
  su -s /bin/sh munge -c /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || die "munge does not work (see /var/log/munge/munged.log)"
fi

# --- fake GPUs: SLURM's gpu plugin wants a character device per GPU --------------------------------------
mkdir -p /etc/slurm "$RUN" "$LOGS" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
gpu_files=()
if [ "$FAKE_GPUS" -gt 0 ]; then
  mkdir -p "$RUN/fake-gpu"
  for ((i = 0; i < FAKE_GPUS; i++)); do
    dev="$RUN/fake-gpu/gpu$i"
    # same device numbers as /dev/null; where mknod is not allowed, fall back to real character devices
    [ -c "$dev" ] || mknod "$dev" c 1 3 2>/dev/null || break
    gpu_files+=("$dev")
  done
  if [ "${#gpu_files[@]}" -lt "$FAKE_GPUS" ]; then
    spare=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom)
    [ "$FAKE_GPUS" -le "${#spare[@]}" ] \
      || die "mknod is not allowed here, so at most ${#spare[@]} fake GPUs are possible (FAKE_GPUS=$FAKE_GPUS)"
    gpu_files=("${spare[@]:0:$FAKE_GPUS}")
  fi
fi

# --- configuration ---------------------------------------------------------------------------------------
# RealMemory must not exceed what slurmd detects, or the node is marked invalid: offer 95 % of it.
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
gres_node=""
[ "$FAKE_GPUS" -gt 0 ] && gres_node="Gres=gpu:$FAKE_GPUS"
new_conf=$(mktemp) && new_gres=$(mktemp)
cat > "$new_conf" <<EOF
# Written by scripts/slurm/start_cluster.sh (single-node test cluster); rewritten on every start.
ClusterName=larp
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
# no cgroups needed: track job processes by parent pid, no task containment
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# no slurmdbd: no accounting, so no sacct (poll with squeue)
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# cons_tres: needed for --gpus; memory is a consumable resource
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job without --mem would otherwise get the whole node's memory and run alone
DefMemPerCPU=1000
GresTypes=gpu
ReturnToService=2
# how long finished jobs stay visible to squeue/scontrol
MinJobAge=$MIN_JOB_AGE
KillWait=5
InactiveLimit=0
Waittime=0
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$mem_mb $gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
: > "$new_gres"
for f in "${gpu_files[@]}"; do echo "NodeName=$NODE Name=gpu File=$f" >> "$new_gres"; done

changed=0
cmp -s "$new_conf" /etc/slurm/slurm.conf || changed=1
cmp -s "$new_gres" /etc/slurm/gres.conf || changed=1
mv "$new_conf" /etc/slurm/slurm.conf && mv "$new_gres" /etc/slurm/gres.conf
chmod 644 /etc/slurm/slurm.conf /etc/slurm/gres.conf

# --- daemons ---------------------------------------------------------------------------------------------
if [ "$changed" = 1 ] && { running "$RUN/slurmctld.pid" || running "$RUN/slurmd.pid"; }; then
  echo "configuration changed: restarting the SLURM daemons"
  SLURM_ONLY=1 bash "$(dirname "$0")/stop_cluster.sh"
fi
if ! running "$RUN/slurmctld.pid"; then
  slurmctld || die_logs "slurmctld did not start"
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q 'is UP' || die_logs "slurmctld does not answer 'scontrol ping'"
if ! running "$RUN/slurmd.pid"; then
  slurmd || die_logs "slurmd did not start"
fi

# --- wait until the node takes jobs ----------------------------------------------------------------------
state=""
for _ in $(seq 120); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    # a node drained by an earlier bad configuration stays drained (saved state): bring it back
    *drain*|*down*|*fail*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.5
done
case "$state" in
  idle|mixed|allocated|completing) ;;
  *) die_logs "node $NODE is not usable (state '${state:-unknown}'; reason: $(sinfo -h -n "$NODE" -o %E 2>/dev/null))" ;;
esac

sinfo -N -o '%N %P %T cpus=%c mem=%m gres=%G'
awk -v t0="$t_start" -v t1="$(date +%s.%N)" 'BEGIN {printf "SLURM cluster ready in %.1f s\n", t1 - t0}'
