#!/bin/sh
# vmsnap (and Azure Backup) post-script for MariaDB and MySQL: releases the
# read lock that pre.sh took, and ends its session.
#
# If the lock session died before this script ran, the lock may have been
# lost before the snapshot finished: exit 10, which vmsnap reports as "not
# application-consistent" (Post-ScriptExecutionFailed).  Any other failure
# exits 1.
#
# postScriptParams: [-s STATE_DIR]   (default /run/vmsnap-mariadb)
set -u
state=/run/vmsnap-mariadb
while getopts s: opt; do
    case $opt in
        s) state=$OPTARG ;;
        *) echo "usage: $0 [-s state-dir]"; exit 2 ;;
    esac
done
QUIESCE_LOST=10

release() {
    [ -f "$state/holder.pid" ] && kill "$(cat "$state/holder.pid")" 2>/dev/null
    rm -f "$state/holder.pid"
}

if [ ! -f "$state/holder.pid" ]; then
    echo "no lock session in $state: did the pre-script run?"
    exit 1
fi
client_pid=$(cat "$state/client.pid" 2>/dev/null)
if grep -q '^session ended' "$state/out" 2>/dev/null || ! kill -0 "$client_pid" 2>/dev/null; then
    echo "the lock session ended before the post-script: the lock was lost"
    cat "$state/out"
    release
    exit $QUIESCE_LOST
fi
# A FIFO with no reader would block the open: bound it.
timeout 10 sh -c "printf \"UNLOCK TABLES;\nSELECT 'UNLOCKED';\n\" > '$state/in'"
i=0
while [ $i -lt 200 ]; do
    if grep -q '^UNLOCKED' "$state/out"; then
        release
        echo "read lock released"
        exit 0
    fi
    if grep -q '^session ended' "$state/out"; then
        break
    fi
    sleep 0.05; i=$((i + 1))
done
echo "the lock session did not confirm the unlock: the lock was lost"
cat "$state/out"
release
exit $QUIESCE_LOST
