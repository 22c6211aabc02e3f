#!/usr/bin/env bash
# Prepares a Debian host for cellgate's bwrap sandbox, idempotently.
#
# Kernels run under numeric uids from a reserved range (sandbox.Config
# UIDBase/UIDCount, default 70000..70999) with no passwd or group entries:
# nothing is created for them. This script checks that the range is free of
# accounts and of subordinate id ranges (whoever owns a subuid range can
# become those uids through newuidmap), that unprivileged user namespaces
# are allowed (bwrap runs as the kernel's uid), enabling them if a sysctl
# forbids them, and runs one sandbox as the first uid of the range.
#
# Environment: CELLGATE_UID_BASE (70000), CELLGATE_UID_COUNT (1000).
set -euo pipefail

base=${CELLGATE_UID_BASE:-70000}
count=${CELLGATE_UID_COUNT:-1000}
last=$((base + count - 1))
fail=0

say() { echo "sandbox-setup: $*"; }
problem() { echo "sandbox-setup: $*" >&2; fail=1; }

if [ "$(id -u)" -ne 0 ]; then
  say "not root: checking only"
fi

for cmd in bwrap prlimit choom kill setpriv; do
  command -v "$cmd" >/dev/null || problem "$cmd missing (packages bubblewrap, util-linux, procps)"
done
if [ -u "$(command -v bwrap || echo /nonexistent)" ]; then
  problem "bwrap is setuid; cellgate expects Debian's unprivileged bubblewrap"
fi

# Kernel: nosymfollow (5.10) for the gateway-side binds.
read -r major minor _ < <(uname -r | tr '.-' '  ')
if [ "$major" -lt 5 ] || { [ "$major" -eq 5 ] && [ "$minor" -lt 10 ]; }; then
  problem "Linux $(uname -r) lacks the nosymfollow mount flag (5.10+)"
fi

# The uid range must belong to nobody.
awk -F: -v lo="$base" -v hi="$last" -v f=/etc/passwd \
  '$3 >= lo && $3 <= hi { print f ": " $1 " has uid " $3; bad=1 } END { exit bad }' /etc/passwd ||
  problem "accounts in the kernel uid range $base..$last"
awk -F: -v lo="$base" -v hi="$last" -v f=/etc/group \
  '$3 >= lo && $3 <= hi { print f ": " $1 " has gid " $3; bad=1 } END { exit bad }' /etc/group ||
  problem "groups in the kernel uid range $base..$last"
for f in /etc/subuid /etc/subgid; do
  [ -e "$f" ] || continue
  awk -F: -v lo="$base" -v hi="$last" -v f="$f" \
    'NF >= 3 && $2 <= hi && $2 + $3 - 1 >= lo { print f ": " $1 " owns " $2 ".." $2 + $3 - 1; bad=1 } END { exit bad }' "$f" ||
    problem "subordinate ids overlap the kernel uid range $base..$last"
done

# Unprivileged user namespaces: Debian allows them by default; undo a
# hardening that forbade them, and say so.
conf=/etc/sysctl.d/50-cellgate-sandbox.conf
setting() {
  local key=$1 want=$2 file
  file=/proc/sys/${key//.//}
  [ -e "$file" ] || return 0
  if [ "$(cat "$file")" = 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      problem "$key is 0: bwrap cannot run as a kernel uid (run this script as root to set it)"
      return 0
    fi
    say "setting $key=$want (in $conf): bwrap runs unprivileged, as each kernel's uid"
    sysctl -q -w "$key=$want"
    grep -qs "^$key" "$conf" || echo "$key = $want" >>"$conf"
  fi
}
setting kernel.unprivileged_userns_clone 1
setting user.max_user_namespaces 15000
if [ -e /proc/sys/kernel/apparmor_restrict_unprivileged_userns ] &&
  [ "$(cat /proc/sys/kernel/apparmor_restrict_unprivileged_userns)" = 1 ]; then
  problem "AppArmor restricts unprivileged user namespaces: allow them for bwrap (an AppArmor profile with 'userns,') or set kernel.apparmor_restrict_unprivileged_userns=0"
fi

# One sandbox as the first kernel uid, as the gateway will start them.
if [ "$fail" -eq 0 ] && [ "$(id -u)" -eq 0 ]; then
  if ! out=$(cd / && setpriv --reuid="$base" --regid="$base" --clear-groups -- \
    bwrap --unshare-user --uid "$base" --gid "$base" --disable-userns \
    --unshare-ipc --unshare-pid --unshare-net --unshare-uts --unshare-cgroup-try \
    --die-with-parent --new-session \
    --ro-bind /usr /usr --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/bin /bin \
    --proc /proc --dev /dev -- /usr/bin/true 2>&1); then
    problem "a trial sandbox as uid $base failed: $out"
  fi
fi

if [ "$fail" -ne 0 ]; then
  exit 1
fi
say "kernel uids $base..$last are free and bwrap works"
