#!/usr/bin/env bash
# Start a single-node SLURM (munged + slurmctld + slurmd) on this host for patchlens' cluster test.
#
#   tests/cluster/slurm_up.sh [STATE_DIR]        (default: $PATCHLENS_SLURM_STATE or
#                                                 /tmp/patchlens-slurm)
#   eval "$(tests/cluster/slurm_up.sh)"          # sets SLURM_CONF in the calling shell
#
# - installs Debian's slurmctld slurmd slurm-client munge when they are missing (needs root and
#   apt; PATCHLENS_SLURM_INSTALL=0 forbids installing);
# - writes $STATE_DIR/slurm.conf from tests/cluster/slurm.conf.in (host, CPUs and memory taken from
#   `slurmd -C`); state, spool, pid files and logs all stay in $STATE_DIR; clients find the config
#   through SLURM_CONF (printed on stdout as an export line) and, because job steps launched by
#   Snakemake's SLURM plugin drop SLURM_CONF, through a symlink /etc/slurm/slurm.conf -> $STATE_DIR/
#   slurm.conf (made only where no /etc/slurm/slurm.conf exists; removed by slurm_down.sh);
# - starts munged (as user munge; an already running munged is reused, not recorded), slurmctld
#   and slurmd, records the PIDs it started in $STATE_DIR/*.pid and waits until the node is idle.
# Idempotent: when the daemons recorded in $STATE_DIR are alive it only waits and prints.
# Stop with tests/cluster/slurm_down.sh [STATE_DIR].
# Exit status: 0 ready; 77 SLURM cannot be started here (not root, no apt, install failed): callers
# skip; anything else: a real failure (log tail on stderr).
# Environment: PATCHLENS_SLURM_STATE, PATCHLENS_SLURM_TIMEOUT (s, default 90),
# PATCHLENS_SLURM_PARTITION (default "debug"), PATCHLENS_SLURM_CTLD_PORT / _SLURMD_PORT
# (default 6817 / 6818), PATCHLENS_SLURM_INSTALL (default 1).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${1:-${PATCHLENS_SLURM_STATE:-/tmp/patchlens-slurm}}"
TIMEOUT="${PATCHLENS_SLURM_TIMEOUT:-90}"
PARTITION="${PATCHLENS_SLURM_PARTITION:-debug}"
CTLD_PORT="${PATCHLENS_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${PATCHLENS_SLURM_SLURMD_PORT:-6818}"
INSTALL="${PATCHLENS_SLURM_INSTALL:-1}"
CONF="$STATE_DIR/slurm.conf"
T0=$SECONDS

say() { echo "slurm_up: $*" >&2; }
skip() { echo "slurm_up: SKIP: $*" >&2; exit 77; }
die() { echo "slurm_up: ERROR: $*" >&2; exit 1; }
alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
export PATH="$PATH:/usr/sbin:/sbin"

[[ "$(id -u)" == 0 ]] || skip "needs root to run slurmctld/slurmd/munged (running as $(id -un))"

# 1. packages -------------------------------------------------------------------------------
missing=()
for b in slurmctld slurmd sinfo sbatch squeue munged munge; do
    command -v "$b" >/dev/null 2>&1 || missing+=("$b")
done
if ((${#missing[@]})); then
    [[ "$INSTALL" == 1 ]] || skip "missing ${missing[*]} and PATCHLENS_SLURM_INSTALL=$INSTALL"
    command -v apt-get >/dev/null 2>&1 || skip "missing ${missing[*]} and no apt-get to install them"
    say "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || skip "apt-get update failed (no network?)"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >&2 \
        || skip "apt-get install slurmctld slurmd slurm-client munge failed"
    say "installed in $((SECONDS - T0)) s"
fi

# 2. munge ------------------------------------------------------------------------------------
if [[ -e "$STATE_DIR" && ! -e "$STATE_DIR/.patchlens-slurm" ]] && [[ -n "$(ls -A "$STATE_DIR")" ]]; then
    die "$STATE_DIR exists, is not empty and was not made by slurm_up.sh; pick another STATE_DIR"
fi
mkdir -p "$STATE_DIR"/{ctld,spool,log}
touch "$STATE_DIR/.patchlens-slurm"
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged already answers; reusing it"
else
    id munge >/dev/null 2>&1 || die "user 'munge' does not exist (is the munge package installed?)"
    mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
    chmod 0700 /etc/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    chmod 0400 /etc/munge/munge.key
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged --force >&2 || die "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
    [[ -s /run/munge/munged.pid ]] || die "munged wrote no /run/munge/munged.pid"
    cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
    munge -n </dev/null | unmunge >/dev/null || die "munged started but does not answer"
    say "munged started (pid $(cat "$STATE_DIR/munged.pid"))"
fi

# 3. slurm.conf -------------------------------------------------------------------------------
HOST="$(hostname -s)"
ADDR=127.0.0.1
running=0
if alive "$STATE_DIR/slurmctld.pid" && alive "$STATE_DIR/slurmd.pid" && [[ -s "$CONF" ]]; then
    say "slurmctld and slurmd from $STATE_DIR already running"
    running=1
else
    hw="$(slurmd -C 2>/dev/null | head -n1 || true)"
    node_hw="$(grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' \
        <<<"$hw" | tr '\n' ' ' || true)"
    [[ -n "$node_hw" ]] || node_hw="CPUs=$(nproc)"
    node_mem="$(grep -oE 'RealMemory=[0-9]+' <<<"$hw" | cut -d= -f2 || true)"
    [[ -n "$node_mem" ]] || node_mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
    mem_mb=$(( node_mem * 9 / 10 ))    # below the measured value so slurmd never drains the node
    sed -e "s|@STATE_DIR@|$STATE_DIR|g" -e "s|@HOST@|$HOST|g" -e "s|@ADDR@|$ADDR|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
        -e "s|CPUs=@CPUS@|${node_hw% }|" -e "s|@MEM_MB@|$mem_mb|g" \
        -e "s|@PARTITION@|$PARTITION|g" "$HERE/slurm.conf.in" >"$CONF.tmp"
    if grep -q '@[A-Z_]*@' "$CONF.tmp"; then
        die "unfilled field in $CONF.tmp: $(grep -o '@[A-Z_]*@' "$CONF.tmp" | head -n1)"
    fi
    mv "$CONF.tmp" "$CONF"
fi
export SLURM_CONF="$CONF"
# Job steps need the config at the default path too: snakemake-executor-plugin-slurm-jobstep
# (0.6) strips every SLURM_* variable, SLURM_CONF included, before its nested `srun`.
if [[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null || true)" != "$CONF" ]]; then
    if [[ -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]]; then
        skip "/etc/slurm/slurm.conf exists and is not ours (a site SLURM?); not replacing it"
    fi
    mkdir -p /etc/slurm
    ln -s "$CONF" /etc/slurm/slurm.conf
    say "linked /etc/slurm/slurm.conf -> $CONF"
fi

# 4. daemons ----------------------------------------------------------------------------------
start() {    # start NAME: run the daemon (it forks and writes $STATE_DIR/NAME.pid), wait for it
    local name="$1" log="$STATE_DIR/log/$1.log"
    alive "$STATE_DIR/$name.pid" && return 0
    shift
    "$name" -f "$CONF" "$@" >&2 || die "$name failed to start: $(tail -n5 "$log" 2>/dev/null)"
    for _ in $(seq 100); do alive "$STATE_DIR/$name.pid" && break; sleep 0.1; done
    alive "$STATE_DIR/$name.pid" || die "$name is not running: $(tail -n5 "$log" 2>/dev/null)"
    say "$name started (pid $(cat "$STATE_DIR/$name.pid"))"
}
if ((!running)); then
    start slurmctld -c    # -c: ignore any saved state
    start slurmd
fi

# 5. wait until the node is idle ----------------------------------------------------------------
state=""
resumed=0
deadline=$((SECONDS + TIMEOUT))
while ((SECONDS < deadline)); do
    state="$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle | mixed | allocated) break ;;
        down* | drain* | fail*)
            if ((!resumed)); then
                scontrol update nodename="$HOST" state=resume >&2 2>/dev/null || true
                resumed=1
            fi ;;
    esac
    sleep 1
done
case "$state" in
    idle | mixed | allocated) ;;
    *) die "node $HOST not idle after ${TIMEOUT} s (state '${state:-no answer}'); logs:
$(tail -n5 "$STATE_DIR/log/slurmctld.log" 2>/dev/null)
$(tail -n5 "$STATE_DIR/log/slurmd.log" 2>/dev/null)" ;;
esac
say "node $HOST $state, partition $PARTITION, ready in $((SECONDS - T0)) s"
echo "export SLURM_CONF=$CONF"
