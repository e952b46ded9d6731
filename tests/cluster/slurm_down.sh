#!/usr/bin/env bash
# Stop the single-node SLURM that tests/cluster/slurm_up.sh started, and remove its state dir.
#
#   tests/cluster/slurm_down.sh [STATE_DIR]    (default: $PATCHLENS_SLURM_STATE or /tmp/patchlens-slurm)
#
# Stops exactly the daemons whose PIDs slurm_up.sh recorded in $STATE_DIR (slurmd, slurmctld,
# munged if slurm_up.sh started it), after cancelling the jobs still queued on that cluster, and
# removes the /etc/slurm/slurm.conf symlink when it points into STATE_DIR. A PID whose process is
# gone, or now belongs to another program, is left alone. Installed packages stay.
# Idempotent: with nothing recorded it does nothing and exits 0.
set -euo pipefail

STATE_DIR="${1:-${PATCHLENS_SLURM_STATE:-/tmp/patchlens-slurm}}"
export PATH="$PATH:/usr/sbin:/sbin"

say() { echo "slurm_down: $*" >&2; }

if [[ ! -d "$STATE_DIR" ]]; then
    say "nothing to stop ($STATE_DIR does not exist)"
    exit 0
fi
if [[ ! -e "$STATE_DIR/.patchlens-slurm" ]]; then
    echo "slurm_down: ERROR: $STATE_DIR was not made by slurm_up.sh (no .patchlens-slurm); not touching it" >&2
    exit 1
fi

# Cancel what is left on our cluster so no job step outlives its slurmd.
if [[ -s "$STATE_DIR/slurm.conf" ]] && command -v squeue >/dev/null 2>&1; then
    jobs="$(SLURM_CONF="$STATE_DIR/slurm.conf" timeout 10 squeue -h -o %i 2>/dev/null || true)"
    if [[ -n "$jobs" ]]; then
        say "cancelling jobs: $(echo $jobs)"
        # shellcheck disable=SC2086
        SLURM_CONF="$STATE_DIR/slurm.conf" timeout 10 scancel $jobs 2>/dev/null || true
        sleep 1
    fi
fi

# stop NAME: terminate the recorded PID if it is still the NAME daemon; KILL after 10 s.
stop() {
    local name="$1" pidfile="$STATE_DIR/$1.pid" pid comm
    [[ -s "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    if [[ "$comm" != "$name" ]]; then
        say "$name (pid $pid) is not running"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $name (pid $pid)"
    rm -f "$pidfile"
}

stop slurmd
stop slurmctld
stop munged
if [[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null || true)" == "$STATE_DIR/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf
    say "removed the symlink /etc/slurm/slurm.conf"
fi
rm -rf "$STATE_DIR"
say "removed $STATE_DIR"
