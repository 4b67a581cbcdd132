#!/usr/bin/env bash
# Run .ci/run the way CI does on a bare Debian 12, on any Linux machine with root and debootstrap: in a fresh
# `debootstrap --variant=minbase bookworm` root (no python3, no venv, no gcc, no CA bundle), from a clean clone of
# this checkout's HEAD, with an empty environment, in private mount and PID namespaces. Afterwards it checks that
# nothing .ci/run installed was left running or enabled: no process but ours in the PID namespace, no
# /usr/sbin/policy-rc.d left behind, the prometheus init script disabled. What it cannot show: the systemd branch
# of .ci/run (a chroot has no systemd as PID 1; there .ci/run disables and masks the unit instead).
#
# Usage (as root): bash .ci/run_on_bare_debian.sh [WORKDIR]   (default /var/tmp/gpuguard-bare-debian)
# The bookworm root is built once into WORKDIR/pristine and copied fresh for every run. A proxy's CA certificates
# in /usr/local/share/ca-certificates are copied in, so pip trusts the same network as this machine.
set -euo pipefail
work=${1:-/var/tmp/gpuguard-bare-debian}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, chroot and namespaces need it)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "apt-get install debootstrap first" >&2; exit 2; }

if [ ! -x "$work/pristine/bin/bash" ]; then
  rm -rf "$work/pristine"
  debootstrap --variant=minbase bookworm "$work/pristine" "$mirror"
fi
root="$work/root"
rm -rf "$root"
cp -a "$work/pristine" "$root"
git clone -q "$repo" "$root/root/gpuguard"
cp /etc/hosts /etc/resolv.conf "$root/etc/"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi

cat > "$root/root/after-ci.sh" <<'AFTER'
#!/bin/bash
# Inside the chroot, after .ci/run: what it must not leave behind.
status=0
if [ -e /usr/sbin/policy-rc.d ]; then echo "FAIL: /usr/sbin/policy-rc.d was left behind"; status=1; fi
if ls /etc/rc[2-5].d/ 2>/dev/null | grep -q '^S[0-9]*prometheus'; then echo "FAIL: prometheus starts at boot"; status=1; fi
# Every process of the PID namespace but this script, the shell that started it and PID 1 (no subshell here:
# it would be a process of its own).
others=""
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  if [ "$pid" != "$$" ] && [ "$pid" != "$PPID" ] && [ "$pid" != 1 ] && [ -e "$p/comm" ]; then
    read -r comm < "$p/comm" || comm="?"
    others+="  $pid $comm"$'\n'
  fi
done
if [ -n "$others" ]; then echo "FAIL: still running:"; printf '%s' "$others"; status=1; fi
[ $status = 0 ] && echo "after .ci/run: no service running or enabled, no policy-rc.d left"
exit $status
AFTER
chmod +x "$root/root/after-ci.sh"

exec unshare --mount --pid --fork --mount-proc bash -c '
  root=$1
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  mount -t sysfs sys "$root/sys"
  mount -t tmpfs tmpfs "$root/tmp"
  chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    CI=true LANG=C.UTF-8 bash -c "cd /root/gpuguard && bash .ci/run < /dev/null; rc=\$?; echo \".ci/run exit status: \$rc\";
                                   /root/after-ci.sh && exit \$rc"
' bash "$root"
