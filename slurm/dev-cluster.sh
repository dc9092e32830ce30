#!/usr/bin/env bash
# A real one-node SLURM cluster (slurmctld + slurmd + slurmdbd/MariaDB + munged) for
# development and the test suite. Every piece of state lives under one directory.
#
#   slurm/dev-cluster.sh start  [STATE_DIR]            install packages if needed, start, wait until usable
#   slurm/dev-cluster.sh stop   [--purge] [--keep-jobs] [STATE_DIR]
#   slurm/dev-cluster.sh status [STATE_DIR]
#   slurm/dev-cluster.sh env    [STATE_DIR]            eval "$(slurm/dev-cluster.sh env)"
#
# STATE_DIR defaults to ${HPCDIFF_SLURM_STATE:-/tmp/hpcdiff-slurm}.
# Environment knobs:
#   HPCDIFF_SLURM_TIMEOUT    seconds to wait for the cluster to become usable (default 90)
#   HPCDIFF_SLURM_PORT_BASE  first of three TCP ports (slurmctld, slurmd, slurmdbd); default:
#                            6817 if free, else the next free triple; remembered in STATE_DIR
#
# Exit codes: 0 ok, 1 failure (a daemon did not come up; its log tail is printed),
# 2 usage error, 3 this machine cannot run the cluster (not root, packages cannot be installed).
# Known limits: needs root (SlurmUser=root; munged runs as "munge" via runuser) and Debian's
# packages (apt-get); one cluster per state dir; the state dir path must be short (unix
# socket paths) and consist of [A-Za-z0-9._+/-] only.
set -euo pipefail

readonly PROG="${0##*/}"
readonly CLUSTER_NAME="hpcdiff"
readonly PARTITION_NAME="debug"
readonly MAX_ARRAY_SIZE="1001"
readonly DEF_MEM_PER_CPU="1024"
readonly DB_NAME="slurm_acct_db"
readonly PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
# Binaries the cluster needs; any missing one triggers the package install.
readonly BINARIES=(slurmctld slurmd slurmdbd sbatch sinfo squeue scontrol scancel sacct sacctmgr
    munged munge unmunge mariadbd mariadb-install-db mariadb-admin runuser flock)
# Daemons in start order; stop goes in reverse.
readonly DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
export LC_ALL=C

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }
unavailable() { log "unavailable: $*"; exit 3; }

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# ----------------------------------------------------------------------------- paths
set_paths() {
    local dir="$1"
    [[ -n "$dir" ]] || die "empty state directory"
    [[ "$dir" == /* ]] || dir="$PWD/$dir"
    # Values end up in slurm.conf (AuthInfo uses ',' and '='), so keep them plain.
    [[ "$dir" =~ ^[A-Za-z0-9._+/-]+$ ]] \
        || die "state directory must match [A-Za-z0-9._+/-]+ (got: $dir)"
    dir="${dir%/}"
    [[ -n "$dir" ]] || die "state directory cannot be /"
    S="$dir"
    ETC="$S/etc"
    SLURM_CONF_FILE="$ETC/slurm.conf"
    DBD_CONF_FILE="$ETC/slurmdbd.conf"
    PORTS_FILE="$ETC/ports"
    RUN="$S/run"
    LOGD="$S/log"
    SPOOL_CTLD="$S/spool/slurmctld"
    SPOOL_D="$S/spool/slurmd"
    MUNGE_DIR="$S/munge"
    MUNGE_KEY="$MUNGE_DIR/munge.key"
    MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
    MYSQL_DIR="$S/mysql"
    MYSQL_DATA="$MYSQL_DIR/data"
    MYSQL_SOCKET="$MYSQL_DIR/mysqld.sock"
    MYSQL_TMP="$MYSQL_DIR/tmp"
    local sock
    for sock in "$MUNGE_SOCKET" "$MYSQL_SOCKET"; do
        (( ${#sock} < 100 )) || die "state directory path too long for a unix socket: $sock"
    done
}

pidfile_of() {
    case "$1" in
        munged) printf '%s\n' "$MUNGE_DIR/munged.pid" ;;
        mariadbd) printf '%s\n' "$MYSQL_DIR/mysqld.pid" ;;
        slurmdbd | slurmctld | slurmd) printf '%s\n' "$RUN/$1.pid" ;;
    esac
}

logfile_of() {
    case "$1" in
        munged) printf '%s\n' "$MUNGE_DIR/munged.log" ;;
        mariadbd) printf '%s\n' "$LOGD/mariadb.log" ;;
        *) printf '%s\n' "$LOGD/$1.log" ;;
    esac
}

# A dead process not yet reaped (the init here reaps orphans lazily) still has a comm.
is_zombie() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    stat="${stat##*) }"
    [[ "${stat%% *}" == Z ]]
}

# Prints the pid of daemon $1 if its pid file names a live process of that name.
daemon_pid() {
    local name="$1" pf pid comm
    pf="$(pidfile_of "$name")"
    [[ -r "$pf" ]] || return 1
    pid="$(tr -dc '0-9' <"$pf" 2>/dev/null || true)"
    [[ -n "$pid" ]] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [[ "$comm" == "$name" ]] || return 1
    is_zombie "$pid" && return 1
    printf '%s\n' "$pid"
}

is_up() { daemon_pid "$1" >/dev/null; }

show_log_tail() {
    local f="$1" n="${2:-40}"
    if [[ -s "$f" ]]; then
        log "--- last $n lines of $f ---"
        tail -n "$n" "$f" >&2
        log "--- end of $f ---"
    else
        log "(log $f is empty or missing)"
    fi
}

fail_daemon() {
    local name="$1" why="$2"
    log "error: $name: $why"
    show_log_tail "$(logfile_of "$name")"
    exit 1
}

# ----------------------------------------------------------------------------- waiting
# wait_for NAME DESCRIPTION CMD...: poll CMD until it succeeds, failing early if daemon NAME
# died, and failing at the global DEADLINE.
wait_for() {
    local name="$1" what="$2"
    shift 2
    local delay=0.1
    while :; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if ! is_up "$name"; then
            # The condition may have come true meanwhile; otherwise the daemon died.
            "$@" >/dev/null 2>&1 && return 0
            fail_daemon "$name" "not running (exited?) while waiting for: $what"
        fi
        if ((SECONDS >= DEADLINE)); then
            fail_daemon "$name" "timed out (${TIMEOUT}s) waiting for: $what"
        fi
        sleep "$delay"
        [[ "$delay" == 0.1 ]] && delay=0.2 || delay=0.5
    done
}

# A daemonizing daemon's parent returns before the child writes its pid file: wait for it
# (bounded) so that later liveness checks mean something.
wait_pidfile() {
    local name="$1" limit=$((SECONDS + 15))
    while ! is_up "$name"; do
        ((SECONDS < limit && SECONDS < DEADLINE)) \
            || fail_daemon "$name" "no live process behind $(pidfile_of "$name")"
        sleep 0.1
    done
}

# ----------------------------------------------------------------------------- packages
ensure_packages() {
    local missing=() b
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || missing+=("$b")
    done
    ((${#missing[@]} == 0)) && return 0
    log "missing: ${missing[*]}; installing Debian packages: ${PACKAGES[*]}"
    [[ "$(id -u)" == 0 ]] || unavailable "not root and binaries missing (${missing[*]})"
    command -v apt-get >/dev/null 2>&1 || unavailable "no apt-get to install ${PACKAGES[*]}"
    local aptlog="$LOGD/apt.log" created_policy=0 rc=0
    mkdir -p "$LOGD"
    # Keep the packages' maintainer scripts from starting system-wide daemons.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    local apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install "${apt_opts[@]}" "${PACKAGES[@]}" >>"$aptlog" 2>&1; then
        log "apt-get install failed; running apt-get update and retrying"
        if apt-get update -q -o DPkg::Lock::Timeout=300 >>"$aptlog" 2>&1; then
            apt-get install "${apt_opts[@]}" "${PACKAGES[@]}" >>"$aptlog" 2>&1 || rc=$?
        else
            rc=$?
        fi
    fi
    ((created_policy)) && rm -f /usr/sbin/policy-rc.d
    if ((rc != 0)); then
        show_log_tail "$aptlog" 20
        unavailable "could not install ${PACKAGES[*]} (see $aptlog)"
    fi
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || unavailable "$b still missing after installing packages"
    done
}

# ----------------------------------------------------------------------------- config
port_listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1
}

choose_ports() {
    local base=""
    if [[ -n "${HPCDIFF_SLURM_PORT_BASE:-}" ]]; then
        base="$HPCDIFF_SLURM_PORT_BASE"
    elif [[ -r "$PORTS_FILE" ]]; then
        base="$(tr -dc '0-9' <"$PORTS_FILE")"
    else
        local try
        for ((try = 6817; try < 6817 + 3 * 40; try += 3)); do
            if ! port_listening "$try" && ! port_listening "$((try + 1))" \
                && ! port_listening "$((try + 2))"; then
                base="$try"
                break
            fi
        done
        [[ -n "$base" ]] || die "no free port triple found from 6817 on"
    fi
    [[ "$base" =~ ^[0-9]+$ ]] && ((base >= 1024 && base <= 65530)) \
        || die "bad port base: $base"
    CTLD_PORT="$base"
    SLURMD_PORT="$((base + 1))"
    DBD_PORT="$((base + 2))"
    printf '%s\n' "$base" >"$PORTS_FILE"
}

# Node line from `slurmd -C` (hardware as slurmd sees it), RealMemory lowered by 5% so a
# slightly different reading at registration cannot drain the node.
node_line() {
    local out first tok key val parts=() name=""
    out="$(slurmd -C 2>/dev/null)" || die "slurmd -C failed"
    first="$(printf '%s\n' "$out" | grep -m1 '^NodeName=')" || die "slurmd -C printed no NodeName line"
    for tok in $first; do
        [[ "$tok" =~ ^([A-Za-z]+)=([A-Za-z0-9._-]+)$ ]] || die "unexpected slurmd -C token: $tok"
        key="${BASH_REMATCH[1]}"
        val="${BASH_REMATCH[2]}"
        case "$key" in
            NodeName) name="$val" ;;
            RealMemory) parts+=("RealMemory=$((val * 95 / 100))") ;;
            CPUs | Boards | SocketsPerBoard | CoresPerSocket | ThreadsPerCore | Sockets)
                parts+=("$key=$val") ;;
            *) ;;
        esac
    done
    [[ -n "$name" ]] || die "slurmd -C gave no NodeName"
    NODE_NAME="$name"
    NODE_LINE="NodeName=$name NodeAddr=127.0.0.1 ${parts[*]} State=UNKNOWN"
}

write_file_atomic() { # path mode content
    local path="$1" mode="$2" tmp
    tmp="$(mktemp "$path.XXXXXX")"
    printf '%s\n' "$3" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
}

write_configs() {
    local host
    host="$(hostname -s 2>/dev/null || uname -n)"
    host="${host%%.*}"
    [[ "$host" =~ ^[A-Za-z0-9._-]+$ ]] || die "unexpected short hostname: $host"
    choose_ports
    node_line
    write_file_atomic "$SLURM_CONF_FILE" 644 "# Generated by slurm/dev-cluster.sh; rewritten on every start.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
CredType=cred/munge
StateSaveLocation=$SPOOL_CTLD
SlurmdSpoolDir=$SPOOL_D
SlurmctldPidFile=$(pidfile_of slurmctld)
SlurmdPidFile=$(pidfile_of slurmd)
SlurmctldLogFile=$(logfile_of slurmctld)
SlurmdLogFile=$(logfile_of slurmd)
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
MaxArraySize=$MAX_ARRAY_SIZE
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCKET
$NODE_LINE
PartitionName=$PARTITION_NAME Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    # slurmdbd insists on mode 600 and ownership by SlurmUser (root).
    write_file_atomic "$DBD_CONF_FILE" 600 "# Generated by slurm/dev-cluster.sh; rewritten on every start.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$(logfile_of slurmdbd)
PidFile=$(pidfile_of slurmdbd)
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=$DB_NAME"
}

make_dirs() {
    mkdir -p "$S" "$ETC" "$RUN" "$LOGD" "$SPOOL_CTLD" "$SPOOL_D" "$MUNGE_DIR" "$MYSQL_DIR" "$MYSQL_TMP"
    # munged runs as "munge" and refuses group/world-writable dirs on its paths.
    chmod 755 "$S" "$ETC" "$RUN" "$LOGD" "$S/spool" "$MUNGE_DIR"
    chmod 700 "$SPOOL_CTLD" "$MYSQL_DIR"
    chown munge:munge "$MUNGE_DIR"
    if [[ ! -s "$MUNGE_KEY" ]]; then
        local tmp
        tmp="$(mktemp "$MUNGE_KEY.XXXXXX")"
        head -c 1024 /dev/urandom >"$tmp"
        chown munge:munge "$tmp"
        chmod 400 "$tmp"
        mv -f "$tmp" "$MUNGE_KEY"
    fi
    runuser -u munge -- test -r "$MUNGE_KEY" \
        || die "the munge user cannot reach $MUNGE_KEY: every parent of $S must be" \
            "searchable by others (pytest's tmp dirs, for one, are mode 0700)"
}

# Environment for every daemon and client call made from here. The marker lets `stop`
# recognise this cluster's slurmstepd processes; MYSQL_UNIX_PORT points the MariaDB client
# library inside slurmdbd at the private server's socket.
export_env() {
    export SLURM_CONF="$SLURM_CONF_FILE"
    export HPCDIFF_SLURM_STATE="$S"
    export MYSQL_UNIX_PORT="$MYSQL_SOCKET"
}

# ----------------------------------------------------------------------------- daemons
start_munged() {
    rm -f "$(pidfile_of munged)"
    # munged wants its log file owned by itself; stderr of the launch goes there as well.
    touch "$(logfile_of munged)"
    chown munge:munge "$(logfile_of munged)"
    chmod 640 "$(logfile_of munged)"
    runuser -u munge -- munged \
        --key-file="$MUNGE_KEY" --socket="$MUNGE_SOCKET" \
        --pid-file="$(pidfile_of munged)" --log-file="$(logfile_of munged)" \
        --seed-file="$MUNGE_DIR/munged.seed" --num-threads=2 \
        </dev/null >>"$(logfile_of munged)" 2>&1 9>&- \
        || fail_daemon munged "munged failed to start"
    wait_pidfile munged
    wait_for munged "munge socket answers" \
        bash -c 'munge -n -S "$1" | unmunge -S "$1"' _ "$MUNGE_SOCKET"
}

mysql_ping() {
    mariadb-admin --no-defaults --socket="$MYSQL_SOCKET" --user=root --connect-timeout=2 ping
}

start_mariadbd() {
    if [[ ! -d "$MYSQL_DATA/mysql" ]]; then
        log "initialising MariaDB datadir"
        rm -rf "$MYSQL_DATA" "$MYSQL_DATA.init"
        mariadb-install-db --no-defaults --datadir="$MYSQL_DATA.init" --user=root \
            --auth-root-authentication-method=socket --skip-test-db \
            >>"$(logfile_of mariadbd)" 2>&1 \
            || fail_daemon mariadbd "mariadb-install-db failed"
        mv "$MYSQL_DATA.init" "$MYSQL_DATA"
    fi
    rm -f "$(pidfile_of mariadbd)"
    setsid mariadbd --no-defaults --user=root \
        --datadir="$MYSQL_DATA" --socket="$MYSQL_SOCKET" --pid-file="$(pidfile_of mariadbd)" \
        --tmpdir="$MYSQL_TMP" --log-error="$(logfile_of mariadbd)" \
        --skip-networking --skip-name-resolve \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --innodb-lock-wait-timeout=900 \
        </dev/null >>"$(logfile_of mariadbd)" 2>&1 9>&- &
    local launched=$!
    # mariadbd does not daemonize: wait for its pid file while the launched process lives.
    while ! is_up mariadbd; do
        kill -0 "$launched" 2>/dev/null || fail_daemon mariadbd "exited at start"
        ((SECONDS < DEADLINE)) || fail_daemon mariadbd "timed out (${TIMEOUT}s) waiting for its pid file"
        sleep 0.1
    done
    wait_for mariadbd "MariaDB answers on $MYSQL_SOCKET" mysql_ping
}

sacctmgr_answers() { sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    rm -f "$(pidfile_of slurmdbd)"
    slurmdbd </dev/null >>"$(logfile_of slurmdbd)" 2>&1 9>&- || fail_daemon slurmdbd "slurmdbd failed to start"
    wait_pidfile slurmdbd
    wait_for slurmdbd "sacctmgr answers" sacctmgr_answers
}

register_cluster() {
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >>"$(logfile_of slurmdbd)" 2>&1 \
            || fail_daemon slurmdbd "sacctmgr add cluster $CLUSTER_NAME failed"
    fi
}

ctld_up() { scontrol ping | grep -q 'is UP'; }

start_slurmctld() {
    rm -f "$(pidfile_of slurmctld)"
    slurmctld -f "$SLURM_CONF_FILE" </dev/null >>"$(logfile_of slurmctld)" 2>&1 9>&- \
        || fail_daemon slurmctld "slurmctld failed to start"
    wait_pidfile slurmctld
    wait_for slurmctld "scontrol ping reports UP" ctld_up
}

start_slurmd() {
    rm -f "$(pidfile_of slurmd)"
    SLURMD_T0="$(date +%s)"
    slurmd -f "$SLURM_CONF_FILE" </dev/null >>"$(logfile_of slurmd)" 2>&1 9>&- \
        || fail_daemon slurmd "slurmd failed to start"
    wait_pidfile slurmd
}

# The node is usable: idle (or running jobs) with no flag, and registered by a slurmd that
# started at or after $1 (epoch seconds). A restarted slurmctld reports the node idle from
# saved state before slurmd has registered, hence the start time check.
node_ready() {
    local since="$1" st line t
    st="$(sinfo -h -n "$NODE_NAME" -o '%t')" || return 1
    [[ "$st" == idle || "$st" == mix || "$st" == alloc ]] || return 1
    [[ -z "$since" ]] && return 0
    line="$(scontrol show node "$NODE_NAME")" || return 1
    [[ "$line" =~ SlurmdStartTime=([^[:space:]]+) ]] || return 1
    t="$(date -d "${BASH_REMATCH[1]}" +%s 2>/dev/null)" || return 1
    ((t >= since))
}

sacct_answers() { sacct -n -a -X -o JobID; }

node_name_from_conf() {
    NODE_NAME="$(sed -n 's/^NodeName=\([^[:space:]]*\).*/\1/p' "$SLURM_CONF_FILE" | head -n1)"
}

all_up() {
    local d
    for d in "${DAEMONS[@]}"; do is_up "$d" || return 1; done
}

# ----------------------------------------------------------------------------- commands
cmd_start() {
    [[ "$(id -u)" == 0 ]] || unavailable "must run as root (SlurmUser=root, munged via runuser)"
    TIMEOUT="${HPCDIFF_SLURM_TIMEOUT:-90}"
    [[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "HPCDIFF_SLURM_TIMEOUT must be an integer"
    local t_start=$SECONDS
    mkdir -p "$S" "$LOGD"
    ensure_packages
    DEADLINE=$((SECONDS + TIMEOUT))
    exec 9>"$S/.lock"
    flock -w "$TIMEOUT" 9 || die "another start/stop holds $S/.lock"
    make_dirs
    export_env

    if all_up && [[ -r "$SLURM_CONF_FILE" ]]; then
        node_name_from_conf
        if node_ready "" 2>/dev/null; then
            log "already up ($S)"
            return 0
        fi
    fi

    # Config changes (cred_expire in particular) need a slurmctld restart, so configs are
    # only rewritten while slurmctld is down; slurmd is restarted along with slurmctld.
    if ! is_up slurmctld; then
        if is_up slurmd; then cmd_stop_one slurmd; fi
        write_configs
    else
        node_name_from_conf
    fi

    is_up munged || start_munged
    is_up mariadbd || start_mariadbd
    is_up slurmdbd || start_slurmdbd
    register_cluster
    is_up slurmctld || start_slurmctld
    SLURMD_T0=""
    is_up slurmd || start_slurmd
    wait_for slurmd "node $NODE_NAME idle and registered by the new slurmd" node_ready "$SLURMD_T0"
    wait_for slurmdbd "sacct answers" sacct_answers
    if [[ -e "$RUN/cancel-jobs-on-start" ]]; then
        log "cancelling jobs whose processes a previous stop had to kill"
        cancel_all_jobs
        rm -f "$RUN/cancel-jobs-on-start"
    fi
    log "up in $((SECONDS - t_start))s: node $NODE_NAME, partition $PARTITION_NAME; eval \"\$($0 env $S)\""
}

cmd_stop_one() {
    local name="$1" pid waited=0
    pid="$(daemon_pid "$name")" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] \
        && ! is_zombie "$pid"; do
        if ((waited >= 300)); then
            log "warning: $name (pid $pid) ignored SIGTERM for 30s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$(pidfile_of "$name")"
}

cancel_all_jobs() {
    is_up slurmctld || return 0
    ctld_up >/dev/null 2>&1 || return 0
    local ids
    ids="$(squeue -h -o '%A' 2>/dev/null || true)"
    [[ -n "$ids" ]] || return 0
    # shellcheck disable=SC2086  # ids are numbers, one per word
    scancel $ids 2>/dev/null || true
    local deadline=$((SECONDS + 45))
    while [[ -n "$(squeue -h -o '%A' 2>/dev/null || true)" ]]; do
        if ((SECONDS >= deadline)); then
            log "warning: jobs still listed 45s after scancel; stopping anyway"
            break
        fi
        sleep 0.2
    done
}

kill_tree() {
    local child
    kill -STOP "$1" 2>/dev/null || true
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$child"; done
    kill -KILL "$1" 2>/dev/null || true
}

# slurmstepd processes of this cluster (they inherit slurmd's environment marker).
kill_stray_stepds() {
    local p pid
    for p in /proc/[0-9]*; do
        pid="${p#/proc/}"
        [[ "$(cat "$p/comm" 2>/dev/null)" == slurmstepd ]] || continue
        if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "HPCDIFF_SLURM_STATE=$S"; then
            log "killing leftover slurmstepd $pid and its job processes"
            kill_tree "$pid"
            # slurmctld was not there to cancel the job: do it at the next start, or the
            # saved state keeps a ghost job holding resources.
            : >"$RUN/cancel-jobs-on-start"
        fi
    done
}

cmd_stop() {
    local purge="$1" keep_jobs="$2"
    [[ -d "$S" ]] || { log "no state directory $S; nothing to stop"; return 0; }
    export_env
    exec 9>"$S/.lock"
    flock -w 120 9 || die "another start/stop holds $S/.lock"
    ((keep_jobs)) || cancel_all_jobs
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        cmd_stop_one "${DAEMONS[i]}"
    done
    ((keep_jobs)) || kill_stray_stepds
    if ((purge)); then
        exec 9>&-
        rm -rf -- "$S"
        log "stopped; removed $S"
    else
        log "stopped; state kept in $S"
    fi
}

cmd_status() {
    local d pid rc=0
    for d in "${DAEMONS[@]}"; do
        if pid="$(daemon_pid "$d")"; then
            printf '%-10s up (pid %s)\n' "$d" "$pid"
        else
            printf '%-10s down\n' "$d"
            rc=1
        fi
    done
    if is_up slurmctld && [[ -r "$SLURM_CONF_FILE" ]]; then
        export_env
        sinfo || rc=1
    fi
    return "$rc"
}

cmd_env() {
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF_FILE"
    printf 'export HPCDIFF_SLURM_STATE=%q\n' "$S"
}

main() {
    (($# >= 1)) || usage
    local cmd="$1" purge=0 keep_jobs=0 dir=""
    shift
    while (($#)); do
        case "$1" in
            --purge) [[ "$cmd" == stop ]] || usage; purge=1 ;;
            --keep-jobs) [[ "$cmd" == stop ]] || usage; keep_jobs=1 ;;
            -h | --help) usage ;;
            -*) log "unknown option: $1"; usage ;;
            *) [[ -z "$dir" ]] || usage; dir="$1" ;;
        esac
        shift
    done
    set_paths "${dir:-${HPCDIFF_SLURM_STATE:-/tmp/hpcdiff-slurm}}"
    case "$cmd" in
        start) cmd_start ;;
        stop) cmd_stop "$purge" "$keep_jobs" ;;
        status) cmd_status ;;
        env) cmd_env ;;
        *) usage ;;
    esac
}

main "$@"
