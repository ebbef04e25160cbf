#!/usr/bin/env bash
# Setup for the `jail` backend's tests (called by .ci/run as root).
#
# Nothing here is required: bubblewrap (the bench baseline) is in .ci/run's list, and
# util-linux (setpriv, for the rootless test) and libc-bin (ldd, for the rootfs test)
# are part of every Debian. python3-venv lets the virtualenv test run instead of
# printing "skipped".
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
# Report what the jail can use on this CI host (namespaces, cgroups, Landlock), so a
# run whose jail tests were skipped says why.
for f in /proc/sys/user/max_user_namespaces /proc/sys/kernel/unprivileged_userns_clone; do
    [ -r "$f" ] && echo "$f = $(cat "$f")"
done
grep -E ' - cgroup2? ' /proc/self/mountinfo | awk '{print "cgroup mount:", $5, $(NF-2)}' || true
