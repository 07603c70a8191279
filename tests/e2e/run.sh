#!/bin/bash
# End-to-end test of the warden package in a booted Debian bookworm container.
#
#   sudo bash tests/e2e/run.sh
#
# Builds the .deb (release binary), checks it with lintian, boots a bookworm
# rootfs with `systemd-nspawn -b` (real systemd as PID 1), installs the package
# and drives the halt levers. Everything lives under target/e2e/: the rootfs
# cache (rootfs-cache.tar, reused when present), the run directory, the logs.
# The container runs in a cgroup of its own (warden-e2e-PID, in every writable
# named/unified hierarchy); teardown kills that cgroup and removes it, so
# nothing survives a failure. Commands reach the container with nsenter into
# its PID 1's namespaces (no machined on this host).
#
# Environment:
#   E2E_WARDEN_BIN=PATH  package this binary instead of `cargo build --release`
#   E2E_CHECKS="1 2 3 5 4 7 6"  which checks to run, in this order (default all)
#   E2E_MIRROR=URL       Debian mirror for debootstrap (default deb.debian.org)
#   E2E_NO_WATCHDOG=1    diagnosis only: run with WatchdogSec=0 (a runtime
#                        drop-in) and count the watchdog check as failed
# The console log and journal of the last run stay in target/e2e/last-run/.
#
# Prints `e2e: N passed, N failed` last; exits non-zero on any failure.
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
work=$target/e2e
cache=$work/rootfs-cache.tar
run=$work/run
logs=$work/last-run
mirror=${E2E_MIRROR:-http://deb.debian.org/debian}
checks=${E2E_CHECKS:-1 2 3 5 4 7 6}
machine=warden-e2e-$$
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

passed=0
failed=0
nspawn_pid=
rootfs_lock=
leader=
cgroups=()
made_nspawn_run_dir=

t_start=$(date +%s.%N)
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2fs", b - a}'; }
log() { printf 'e2e: %s\n' "$*"; }
pass() { passed=$((passed + 1)); printf 'ok     %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL   %s\n' "$*"; }
# check DESC CMD...: runs CMD, counts a pass or a failure.
check() {
    local desc=$1
    shift
    if "$@"; then pass "$desc"; else fail "$desc"; fi
}
# die: a setup step failed; nothing after it can run.
die() {
    fail "$*"
    exit 1
}

phase_t=
phase() {
    [ -n "$phase_t" ] && log "phase '$phase_name' took $(elapsed "$phase_t")"
    phase_name=$1
    phase_t=$(now)
    [ "$1" = end ] || log "--- $1"
}

# ----------------------------------------------------------------------------
# Teardown: kill the container's cgroup, remove it, remove the run directory.

kill_cgroups() {
    local cg
    for cg in "${cgroups[@]}"; do
        [ -e "$cg/cgroup.kill" ] && echo 1 >"$cg/cgroup.kill" 2>/dev/null
    done
    # A v1 hierarchy has no cgroup.kill: SIGKILL every member until none is left.
    for _ in $(seq 100); do
        local left=0
        for cg in "${cgroups[@]}"; do
            [ -d "$cg" ] || continue
            local pids
            pids=$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null)
            if [ -n "$pids" ]; then
                left=1
                # shellcheck disable=SC2086
                kill -9 $pids 2>/dev/null
            fi
        done
        [ $left = 0 ] && return 0
        sleep 0.1
    done
    log "teardown: processes survive in ${cgroups[*]}"
    return 1
}

# unmount_under DIR: lazily unmount whatever is mounted at or below DIR,
# deepest first, so that `rm -rf --one-file-system` never reaches the host.
unmount_under() {
    local m
    findmnt -rn -o TARGET | grep -E "^$1(/|$)" | sort -r | while read -r m; do
        log "teardown: unmounting $m"
        umount -l "$m"
    done
}

teardown() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    phase teardown
    if [ -n "$leader" ] && [ -d "$run" ]; then
        mkdir -p "$logs"
        c journalctl --no-pager -b -o short-monotonic >"$logs/journal.txt" 2>&1
    fi
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # nspawn turns SIGTERM into an orderly poweroff of the container.
        kill -TERM "$nspawn_pid"
        for _ in $(seq 100); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    if [ ${#cgroups[@]} -gt 0 ]; then
        kill_cgroups
        [ -n "$nspawn_pid" ] && wait "$nspawn_pid" 2>/dev/null
        local cg
        for cg in "${cgroups[@]}"; do
            [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
            [ -d "$cg" ] && log "teardown: cannot remove cgroup $cg" && rc=1
        done
    fi
    # nspawn mounts only inside its own mount namespace, which died with it;
    # debootstrap mounts /proc, /sys (and may bind /dev) into its target.
    unmount_under "$run"
    unmount_under "$work/rootfs-build"
    [ -f "$run/console.log" ] && mkdir -p "$logs" && cp "$run/console.log" "$logs/"
    # nspawn removes its image lock and propagation directory when it exits
    # cleanly, not when it was killed: remove ours (named for our rootfs's
    # device:inode and for our machine name).
    [ -n "$rootfs_lock" ] && rm -f "/run/systemd/nspawn/locks/inode-$rootfs_lock"
    rm -rf "/run/systemd/nspawn/propagate/$machine"
    rm -rf --one-file-system "$run" "$work/rootfs-build"
    # /run/systemd/nspawn/{locks,propagate}: remove them if this run made them.
    if [ -n "$made_nspawn_run_dir" ]; then
        rmdir /run/systemd/nspawn/propagate /run/systemd/nspawn/locks /run/systemd/nspawn 2>/dev/null
    fi
    phase end
    log "total $(elapsed "$t_start")"
    echo "e2e: $passed passed, $failed failed"
    if [ "$failed" -gt 0 ] || [ "$rc" -ne 0 ]; then
        [ -d "$logs" ] && log "logs: $logs"
        exit 1
    fi
    exit 0
}

# ----------------------------------------------------------------------------
# Talking to the container.

# c CMD...: run CMD inside the container (all of PID 1's namespaces), clean env.
# No command may hang the test: 90 s, then SIGKILL.
c() {
    timeout -k 5 90 nsenter -t "$leader" -a -- /usr/bin/env -i \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}
# cq CMD...: same, output discarded.
cq() { c "$@" >/dev/null 2>&1; }

# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds.
wait_for() {
    local limit=$1 t0
    shift
    t0=$(now)
    while ! "$@" >/dev/null 2>&1; do
        if awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN{exit !(b - a > l)}'; then
            return 1
        fi
        sleep 0.1
    done
}

agent_pids() { c pgrep -u warden-agent 2>/dev/null | tr '\n' ' '; }
agents_running() { [ -n "$(agent_pids)" ]; }
no_agents() { [ -z "$(agent_pids)" ]; }
main_pid() { c systemctl show -p MainPID --value warden.service; }
is_active() { [ "$(c systemctl is-active warden.service)" = active ]; }
is_inactive() { [ "$(c systemctl is-active warden.service)" = inactive ]; }
status_text() { c warden status 2>&1; }
in_safe_mode() { status_text | grep -qi 'safe mode'; }
not_in_safe_mode() { ! in_safe_mode && status_text >/dev/null; }
agent_cgroup_ok() {
    local pid=$1 cg
    cg=$(c cat "/proc/$pid/cgroup")
    printf '       /proc/%s/cgroup:\n%s\n' "$pid" "$(sed 's/^/         /' <<<"$cg")"
    grep -Eq '/warden\.service/agents/demo$' <<<"$cg"
}
daemon_cgroup_ok() {
    local cg
    cg=$(c cat "/proc/$(main_pid)/cgroup")
    printf '       daemon /proc/%s/cgroup: %s\n' "$(main_pid)" "$(grep -E '^(0|[0-9]+:name=systemd):' <<<"$cg" | tr '\n' ' ')"
    grep -Eq '/warden\.service/supervisor$' <<<"$cg"
}
show_status() { status_text | sed 's/^/       | /'; }

# ----------------------------------------------------------------------------
# Setup.

[ "$(id -u)" = 0 ] || { echo "e2e: must run as root" >&2; echo "e2e: 0 passed, 1 failed"; exit 1; }
for tool in systemd-nspawn debootstrap lintian nsenter findmnt dpkg-deb dpkg-shlibdeps strip; do
    command -v "$tool" >/dev/null || {
        echo "e2e: $tool missing: run tests/e2e/deps.sh" >&2
        echo "e2e: 0 passed, 1 failed"
        exit 1
    }
done
mkdir -p "$work"
exec 9>"$work/lock"
flock -n 9 || { echo "e2e: another run holds $work/lock" >&2; echo "e2e: 0 passed, 1 failed"; exit 1; }
trap teardown EXIT
trap 'fail "interrupted by a signal"; exit 130' INT TERM
unmount_under "$run"
unmount_under "$work/rootfs-build"
rm -rf --one-file-system "$run" "$logs" "$work/rootfs-build"
mkdir -p "$run"
# A cgroup of our own in each writable hierarchy that systemd uses:
# debootstrap and the container run in it (the container's systemd gets it
# delegated), and teardown kills it whole.
for h in /sys/fs/cgroup /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do
    fstype=$(stat -f -c %T "$h" 2>/dev/null)
    if [ "$fstype" = cgroup2fs ] || { [ "$h" = /sys/fs/cgroup/systemd ] && [ "$fstype" = cgroupfs ]; }; then
        mkdir "$h/$machine" || die "create cgroup $h/$machine"
        cgroups+=("$h/$machine")
    fi
done
[ ${#cgroups[@]} -gt 0 ] || die "no writable systemd or cgroup2 hierarchy"
# in_cgroup CMD... &: run CMD in the test's cgroup. Only in the background:
# it execs CMD in the subshell that `&` made, so $! is CMD's own pid.
in_cgroup() {
    for cg in "${cgroups[@]}"; do echo "$BASHPID" >"$cg/cgroup.procs"; done
    exec "$@"
}

phase "build .deb"
deb=$(WARDEN_BIN=${E2E_WARDEN_BIN:-} bash "$repo/packaging/build-deb.sh" 2>"$run/build.log" | tail -n1)
if [ ! -f "$deb" ]; then
    tail -n 40 "$run/build.log"
    die "build the .deb"
fi
pass "build the .deb: $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB)"

phase lintian
lint=$(lintian "$deb" 2>&1 | grep -v 'running with root privileges')
[ -n "$lint" ] && sed 's/^/       | /' <<<"$lint"
check "lintian: no errors ($(grep -c '^W:' <<<"$lint") warnings)" bash -c '! grep -q "^E:" <<<"$1"' _ "$lint"

phase "rootfs"
if [ -f "$cache" ]; then
    log "reusing $cache"
else
    in_cgroup debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,adduser,procps \
        bookworm "$work/rootfs-build" "$mirror" >"$run/debootstrap.log" 2>&1 &
    if ! wait $!; then
        tail -n 20 "$run/debootstrap.log"
        die "debootstrap bookworm"
    fi
    # No apt lists or .debs in the cache: nothing in the test downloads.
    rm -rf "$work/rootfs-build/var/cache/apt/archives/"*.deb
    unmount_under "$work/rootfs-build"
    tar -C "$work/rootfs-build" -cf "$cache.tmp" . && mv "$cache.tmp" "$cache" || die "write $cache"
    rm -rf --one-file-system "$work/rootfs-build"
fi
mkdir -p "$run/rootfs"
tar -C "$run/rootfs" -xf "$cache" || die "unpack the rootfs"
cp "$deb" "$run/rootfs/root/warden.deb"
pass "rootfs ready ($(du -sm "$run/rootfs" | cut -f1) MiB)"

phase "boot container"
[ -d /run/systemd/nspawn ] || made_nspawn_run_dir=1
rootfs_lock=$(stat -c '%d:%i' "$run/rootfs")
# nspawn's seccomp allow list lacks fanotify (warden names the writer of a
# protected file with it, and falls back to inotify, where any change halts,
# without it): allow it, as a host would.
in_cgroup systemd-nspawn --quiet --register=no --keep-unit --private-network \
    --system-call-filter='fanotify_init fanotify_mark name_to_handle_at' \
    --machine="$machine" --console=read-only -D "$run/rootfs" -b \
    >"$run/console.log" 2>&1 </dev/null &
nspawn_pid=$!
for _ in $(seq 100); do
    leader=$(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null | awk '{print $1}')
    [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ] && break
    leader=
    sleep 0.1
done
[ -n "$leader" ] || { tail -n 20 "$run/console.log"; die "container PID 1 did not start"; }
booted() { local s; s=$(c systemctl is-system-running 2>/dev/null); [ "$s" = running ] || [ "$s" = degraded ]; }
if ! wait_for 90 booted; then
    tail -n 20 "$run/console.log"
    die "container boot (state: $(c systemctl is-system-running 2>&1))"
fi
c systemctl --failed --no-legend --plain | sed 's/^/       failed unit: /'
pass "container booted: systemd $(c systemctl --version | awk 'NR==1{print $2}'), leader pid $leader"

# What the filesystem looks like before install; compared after purge.
snapshot() {
    {
        c find / -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune -o -print
        c find /run -xdev
    } 2>/dev/null | LC_ALL=C sort
}
snapshot >"$run/fs-before.txt"
before_users=$(c getent passwd | cut -d: -f1 | sort | tr '\n' ' ')
before_groups=$(c getent group | cut -d: -f1 | sort | tr '\n' ' ')

phase "install"
if [ -n "${E2E_NO_WATCHDOG:-}" ]; then
    log "E2E_NO_WATCHDOG: warden.service runs with WatchdogSec=0"
    c mkdir -p /run/systemd/system/warden.service.d
    c sh -c 'printf "[Service]\nWatchdogSec=0\n" >/run/systemd/system/warden.service.d/e2e-no-watchdog.conf'
fi
t=$(now)
if c dpkg -i /root/warden.deb >"$run/dpkg-i.log" 2>&1; then
    pass "dpkg -i warden.deb ($(elapsed "$t"))"
else
    sed 's/^/       | /' "$run/dpkg-i.log"
    die "dpkg -i warden.deb"
fi
verify=$(c systemd-analyze verify warden.service 2>&1)
[ -n "$verify" ] && sed 's/^/       | /' <<<"$verify"
# The minimal rootfs has no man(1): its complaint about Documentation=man: is not ours.
check "systemd-analyze verify warden.service: no complaints" test -z "$(grep -i warden <<<"$verify" | grep -v "Command 'man ")"
check "users: warden-agent (nologin, no home), group warden" bash -c '
    e=$(nsenter -t '"$leader"' -a getent passwd warden-agent) &&
    [ "$(cut -d: -f6 <<<"$e")" = /nonexistent ] && [ "$(cut -d: -f7 <<<"$e")" = /usr/sbin/nologin ] &&
    nsenter -t '"$leader"' -a getent group warden >/dev/null &&
    ! nsenter -t '"$leader"' -a id -nG warden-agent | tr " " "\\n" | grep -qx warden'
modes=$(c stat -c '%n %a %U:%G' /safety /var/lib/warden /var/log/warden /etc/warden/warden.toml)
sed 's/^/       /' <<<"$modes"
check "directory modes" test "$modes" = "/safety 755 root:root
/var/lib/warden 700 root:root
/var/log/warden 750 root:warden
/etc/warden/warden.toml 640 root:warden"
check "enabled at boot" test "$(c systemctl is-enabled warden.service)" = enabled

# ----------------------------------------------------------------------------
# The checks.

check1() {
    phase "1: service active, agent in its own cgroup"
    local t
    t=$(now)
    if wait_for 30 is_active; then
        pass "1 service active ($(elapsed "$t") after install)"
    else
        c systemctl status --no-pager warden.service | sed 's/^/       | /'
        fail "1 service active (state: $(c systemctl is-active warden.service))"
        return
    fi
    if wait_for 20 agents_running; then
        pass "1 demo agent running ($(elapsed "$t")): pids $(agent_pids)"
    else
        show_status
        fail "1 demo agent running"
        return
    fi
    local pid
    pid=$(c pgrep -o -u warden-agent)
    check "1 agent in <unit cgroup>/agents/demo" agent_cgroup_ok "$pid"
    # Pure v2: the daemon must leave the unit's cgroup to its children (no
    # internal processes once controllers are on). Hybrid: no controllers on
    # unified, so the daemon may stay in the unit's cgroup (DESIGN.md, cgroups).
    if [ "$(c stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then
        check "1 daemon in <unit cgroup>/supervisor (pure v2)" daemon_cgroup_ok
    else
        daemon_cgroup_ok || log "hybrid cgroups: the daemon stays in the unit's cgroup (allowed)"
    fi
    check "1 /run/warden 0755 root:root" test "$(c stat -c '%a %U:%G' /run/warden 2>&1)" = "755 root:root"
    check "1 socket /run/warden/control.sock 0660 root:warden" test \
        "$(c stat -c '%a %U:%G' /run/warden/control.sock 2>&1)" = "660 root:warden"
    check "1 warden-web.service active" wait_for 20 web_active
    check "1 warden web runs as warden-web with no capabilities" web_unprivileged
    local tok
    tok=$(c warden token create --name e2e --role viewer --json | sed -n 's/.*"secret": *"\([^"]*\)".*/\1/p')
    check "1 warden web: /api/status with a token answers" web_status_ok "$tok"
    check "1 warden web: /api/status without a token is 401" web_status_401
    show_status
}

web_active() { [ "$(c systemctl is-active warden-web.service)" = active ]; }
web_unprivileged() {
    local p
    p=$(c systemctl show -p MainPID --value warden-web.service)
    [ -n "$p" ] && [ "$p" != 0 ] &&
        c grep -q "^Uid:[[:space:]]*$(c id -u warden-web)[[:space:]]" "/proc/$p/status" &&
        c grep -q '^CapEff:[[:space:]]*0000000000000000$' "/proc/$p/status"
}
# The container's bookworm minbase has no curl (and the rootfs is cached), so
# the request is made with bash's /dev/tcp from inside the container.
web_get() {
    c bash -c 'exec 3<>/dev/tcp/127.0.0.1/8787; printf "GET $1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${2:+Authorization: Bearer $2\r\n}\r\n" >&3; cat <&3' _ "$@"
}
web_status_ok() { web_get /api/status "$1" | grep -q '^HTTP/1.1 200' ; }
web_status_401() { web_get /api/status | grep -q '^HTTP/1.1 401' ; }

check2() {
    phase "2: stop file"
    wait_for 20 agents_running || { fail "2 precondition: agents running"; return; }
    local main t
    main=$(main_pid)
    t=$(now)
    c touch /safety/STOP
    if wait_for 10 no_agents; then
        pass "2 touch /safety/STOP: every agent process gone in $(elapsed "$t")"
    else
        fail "2 touch /safety/STOP: agents still running: $(agent_pids)"
    fi
    check "2 daemon still up, same pid $main" bash -c "[ \"\$(nsenter -t $leader -a systemctl is-active warden)\" = active ] &&
        [ \"\$(nsenter -t $leader -a systemctl show -p MainPID --value warden)\" = $main ]"
    show_status
    check "2 warden status says SAFE MODE" in_safe_mode
    check "2 warden status says why (stop file)" bash -c "nsenter -t $leader -a warden status 2>&1 | grep -Eqi 'stop.?file|/safety/STOP'"
    sleep 2
    check "2 nothing starts while the stop file exists" no_agents
    check "2 resume refused while the stop file exists" bash -c "! nsenter -t $leader -a warden resume --reason 'should be refused' >/dev/null 2>&1"
    c rm -f /safety/STOP
    t=$(now)
    if c warden resume --reason test; then
        pass "2 rm stop file; warden resume --reason test"
    else
        fail "2 warden resume --reason test (rc $?)"
    fi
    if wait_for 20 agents_running; then
        pass "2 agent back $(elapsed "$t") after resume"
    else
        show_status
        fail "2 agent back after resume"
    fi
    # The same lever through the control socket.
    t=$(now)
    c warden halt --reason "e2e: halt command" >/dev/null
    if wait_for 10 no_agents; then
        pass "2 warden halt: every agent process gone in $(elapsed "$t")"
    else
        fail "2 warden halt: agents still running: $(agent_pids)"
    fi
    check "2 warden halt: SAFE MODE" in_safe_mode
    c warden resume --reason "e2e: after halt command" >/dev/null
    check "2 warden resume after halt: agent back" wait_for 20 agents_running
}

check3() {
    phase "3: systemctl stop"
    wait_for 20 agents_running || { fail "3 precondition: agents running"; return; }
    local t
    t=$(now)
    c systemctl stop warden.service
    log "systemctl stop returned after $(elapsed "$t")"
    check "3 every agent process gone" no_agents
    # Result=timeout would mean systemd had to SIGKILL after TimeoutStopSec.
    local r
    r=$(c systemctl show -p Result -p ExecMainCode -p ExecMainStatus --value warden.service | tr '\n' ' ')
    check "3 daemon stopped by itself, exit 0 (Result ExecMainCode ExecMainStatus: $r)" test "$r" = "success 1 0 "
    check "3 unit inactive (not failed)" is_inactive
    check "3 unit cgroup removed" test -z "$(c systemctl show -p ControlGroup --value warden.service)"
    check "3 warden status exits 3 (daemon not running)" bash -c "nsenter -t $leader -a warden status >/dev/null 2>&1; [ \$? = 3 ]"
}

check5() {
    phase "5: restart after a clean stop"
    local t
    is_active && c systemctl stop warden.service
    # A short watchdog for this start: the daemon must honour WATCHDOG_USEC.
    if [ -z "${E2E_NO_WATCHDOG:-}" ]; then
        c mkdir -p /run/systemd/system/warden.service.d
        c sh -c 'printf "[Service]\nWatchdogSec=3s\n" >/run/systemd/system/warden.service.d/e2e-watchdog.conf'
        c systemctl daemon-reload
    fi
    t=$(now)
    c systemctl restart warden.service
    check "5 systemctl restart: active ($(elapsed "$t"))" is_active
    if wait_for 20 agents_running; then
        pass "5 agents started, no halt latch ($(elapsed "$t")): pids $(agent_pids)"
    else
        show_status
        fail "5 agents started after a clean stop"
    fi
    check "5 not in SAFE MODE" not_in_safe_mode
    if [ -n "${E2E_NO_WATCHDOG:-}" ]; then
        fail "5 watchdog not checked (E2E_NO_WATCHDOG)"
        return
    fi
    local main
    main=$(main_pid)
    sleep 8
    check "5 WatchdogSec=3s: still the same daemon after 8s (WATCHDOG=1 pings)" bash -c \
        "[ \"\$(nsenter -t $leader -a systemctl show -p MainPID --value warden)\" = $main ] &&
         [ \"\$(nsenter -t $leader -a systemctl is-active warden)\" = active ]"
    c rm -f /run/systemd/system/warden.service.d/e2e-watchdog.conf
    c systemctl daemon-reload
}

check4() {
    phase "4: kill -9 of the daemon"
    wait_for 20 agents_running || { fail "4 precondition: agents running"; return; }
    local main t restarts
    main=$(main_pid)
    restarts=$(c systemctl show -p NRestarts --value warden.service)
    t=$(now)
    c kill -9 "$main"
    if wait_for 10 no_agents; then
        pass "4 kill -9 $main: every agent process gone in $(elapsed "$t")"
    else
        fail "4 kill -9 $main: agents still running: $(agent_pids)"
    fi
    restarted() {
        local m
        m=$(main_pid)
        [ "$m" != 0 ] && [ "$m" != "$main" ] && is_active
    }
    if wait_for 30 restarted; then
        pass "4 systemd restarted the daemon in $(elapsed "$t"): pid $(main_pid), NRestarts $restarts -> $(c systemctl show -p NRestarts --value warden.service)"
    else
        fail "4 systemd restarted the daemon (state $(c systemctl is-active warden.service))"
        return
    fi
    show_status
    check "4 restarted daemon is in SAFE MODE" in_safe_mode
    sleep 2
    check "4 no agent started after the crash" no_agents
    c warden resume --reason "e2e: after kill -9" >/dev/null
    check "4 warden resume after the crash starts agents" wait_for 20 agents_running
}

demo_pid() { c pgrep -o -u warden-agent -f 'demo agent alive'; }
second_running() { c warden agents | grep -Eq '^second +running'; }

check7() {
    phase "7: live reload"
    wait_for 20 agents_running || { fail "7 precondition: agents running"; return; }
    not_in_safe_mode || { fail "7 precondition: not in SAFE MODE"; return; }
    local demo main t
    demo=$(demo_pid)
    main=$(main_pid)
    check "7 protected paths watched with fanotify, writes refused" bash -c \
        "nsenter -t $leader -a warden status 2>&1 | grep -q 'fanotify, writers named; agents. writes refused'"
    # The operator adds an agent to the live config.
    c sh -c 'cat >>/etc/warden/warden.toml <<EOF

# Added by the operator while warden runs; applied by systemctl reload.
[[agent]]
name = "second"
command = ["/bin/sh", "-c", "while :; do echo second agent alive; sleep 5; done"]
user = "warden-agent"
cwd = "/"
EOF'
    sleep 1
    check "7 operator's edit: no halt" not_in_safe_mode
    check "7 operator's edit audited (config_changed_on_disk)" bash -c \
        "nsenter -t $leader -a warden audit tail -n 100 2>&1 | grep -q config_changed_on_disk"
    check "7 status: config on disk differs from the running one" bash -c \
        "nsenter -t $leader -a warden status 2>&1 | grep -q DIFFERS"
    t=$(now)
    if c systemctl reload warden.service >"$run/reload.log" 2>&1; then
        pass "7 systemctl reload warden ($(elapsed "$t"))"
    else
        sed 's/^/       | /' "$run/reload.log"
        c journalctl -u warden.service -n 20 --no-pager | sed 's/^/       | /'
        fail "7 systemctl reload warden"
    fi
    check "7 added agent running" wait_for 20 second_running
    check "7 demo agent kept its pid ($demo)" test "$(demo_pid)" = "$demo"
    check "7 daemon kept its pid ($main)" test "$(main_pid)" = "$main"
    check "7 not in SAFE MODE" not_in_safe_mode
    check "7 reload audited (config_reloaded)" bash -c \
        "nsenter -t $leader -a warden audit tail -n 100 2>&1 | grep -q config_reloaded"
    show_status
}

check6() {
    phase "6: remove, purge"
    local t
    c rm -f /safety/STOP
    # Drop-ins of this test (E2E_NO_WATCHDOG) are not the package's to remove.
    c rm -rf /run/systemd/system/warden.service.d
    # An operator's edit of the conffile with the daemon stopped (check 7
    # edits it live and reloads).
    c systemctl stop warden.service
    c sh -c 'echo "# edited by the operator" >>/etc/warden/warden.toml'
    c systemctl start warden.service
    check "6 config edited while stopped; agents running again" wait_for 20 agents_running
    # Reinstall = the upgrade path, on a live daemon: prerm stops it before
    # dpkg replaces its files, postinst starts it; dpkg keeps the edit.
    local main
    main=$(main_pid)
    t=$(now)
    if c dpkg -i --force-confold /root/warden.deb >"$run/reinstall.log" 2>&1; then
        pass "6 reinstall (upgrade path) ($(elapsed "$t"))"
    else
        sed 's/^/       | /' "$run/reinstall.log"
        fail "6 reinstall (upgrade path)"
    fi
    check "6 reinstall: daemon restarted (pid $main -> $(main_pid)), active" bash -c \
        "m=\$(nsenter -t $leader -a systemctl show -p MainPID --value warden); [ \"\$m\" != 0 ] && [ \"\$m\" != $main ] &&
         [ \"\$(nsenter -t $leader -a systemctl is-active warden)\" = active ]"
    check "6 reinstall: edited config kept" cq grep -q "edited by the operator" /etc/warden/warden.toml
    check "6 reinstall: agents running again" wait_for 20 agents_running
    check "6 reinstall: not in SAFE MODE (no tamper halt)" not_in_safe_mode
    t=$(now)
    if c apt-get remove -y warden >"$run/remove.log" 2>&1; then
        pass "6 apt-get remove warden ($(elapsed "$t"))"
    else
        sed 's/^/       | /' "$run/remove.log"
        fail "6 apt-get remove warden"
    fi
    check "6 remove: no agent or daemon process" bash -c "no=\$(nsenter -t $leader -a pgrep -x warden); [ -z \"\$no\" ]" 
    check "6 remove: no agent process" no_agents
    check "6 remove: binary, unit, udev rule gone" bash -c "nsenter -t $leader -a sh -c '! test -e /usr/bin/warden && ! test -e /lib/systemd/system/warden.service && ! test -e /lib/udev/rules.d/60-warden-watchdog.rules'"
    check "6 remove: config, state, logs, users kept" bash -c "nsenter -t $leader -a sh -c 'test -f /etc/warden/warden.toml && test -d /var/lib/warden && test -d /var/log/warden && getent passwd warden-agent >/dev/null && getent group warden >/dev/null'"
    check "6 remove: unit not loaded" bash -c "s=\$(nsenter -t $leader -a systemctl show -p LoadState --value warden.service); [ \"\$s\" = not-found ] || [ \"\$s\" = masked ]"
    t=$(now)
    if c apt-get purge -y warden >"$run/purge.log" 2>&1; then
        pass "6 apt-get purge warden ($(elapsed "$t"))"
    else
        sed 's/^/       | /' "$run/purge.log"
        fail "6 apt-get purge warden"
    fi
    check "6 purge: package unknown to dpkg" bash -c "! nsenter -t $leader -a dpkg-query -W -f='\${Status}' warden 2>/dev/null | grep -q installed"
    check "6 purge: unit not-found" test "$(c systemctl show -p LoadState --value warden.service)" = not-found
    check "6 purge: users and groups as before" test "$(c getent passwd | cut -d: -f1 | sort | tr '\n' ' ')$(c getent group | cut -d: -f1 | sort | tr '\n' ' ')" = "$before_users$before_groups"
    snapshot >"$run/fs-after.txt"
    # Paths that appear or vanish with any package operation, warden or not.
    local noise='/var/(log|cache|backups|tmp|lib/(dpkg|apt|dbus))(/.*)?|/var/lib/systemd/(timers|catalog|random-seed|coredump)(/.*)?|/var/lib/systemd/deb-systemd(-user)?-helper-enabled|/tmp(/.*)?|/root(/.*)?|/run/(systemd|user|lock|udev|dbus|log|mount|credentials)(/.*)?|/run/(utmp|initctl|adduser|agetty\.reload)|/etc/(passwd|group|shadow|gshadow|subuid|subgid)-?|/etc/(ld\.so\.cache|machine-id)'
    local diff
    diff=$(LC_ALL=C comm -3 "$run/fs-before.txt" "$run/fs-after.txt" | sed 's/^\t/+ /; t; s/^/- /' | grep -Ev "^[-+] ($noise)$")
    local stale
    stale=$(LC_ALL=C comm -13 "$run/fs-before.txt" "$run/fs-after.txt" | grep -i warden)
    [ -n "$diff$stale" ] && { echo "       filesystem differs from before install:"; sed 's/^/       | /' <<<"$diff"$'\n'"$stale"; }
    check "6 purge: filesystem as before install (no warden files, /safety, units, state)" test -z "$diff$stale"
}

for n in $checks; do
    case $n in
    1 | 2 | 3 | 4 | 5 | 6 | 7) "check$n" ;;
    *) die "unknown check $n in E2E_CHECKS" ;;
    esac
done
# teardown (EXIT trap) prints the totals.
