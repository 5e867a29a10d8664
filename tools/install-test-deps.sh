#!/bin/sh
# usage: install-test-deps.sh [EXTRA_PACKAGE...]
# Installs the system packages the test suite needs (and EXTRA_PACKAGEs),
# only those missing, so it is quick when everything is there.  Services
# are installed, never started (a policy-rc.d that answers 101 while apt
# runs).  Not root: says what is missing; the tests that need it skip.
set -eu
PACKAGES="e2fsprogs xfsprogs btrfs-progs util-linux mount sqlite3
postgresql postgresql-contrib mariadb-server mariadb-client
qemu-guest-agent openssh-server $*"

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    case "$status" in
        ii*) ;;
        *) missing="$missing $pkg" ;;
    esac
done
if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-test-deps: missing:$missing (not root or no apt: the tests that need them skip)" >&2
    exit 0
fi
echo "install-test-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    # ours: removed on every exit; someone else's is left alone
    trap 'rm -f "$policy"' EXIT INT TERM
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
fi
apt-get update -qq
# shellcheck disable=SC2086  # one word per package
apt-get install -y -qq --no-install-recommends $missing >/dev/null
