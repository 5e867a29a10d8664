#!/bin/sh
# vmsnap (and Azure Backup) pre-script for MariaDB and MySQL.
#
# Takes FLUSH TABLES WITH READ LOCK in a background session that holds the
# lock until the post-script releases it (a lock dies with its session, so
# the session must outlive this script), and confirms the lock is held
# before exiting.  With the lock, every table (MyISAM included) is flushed
# and closed, and no write happens until the post-script.
#
# preScriptParams: [-S SOCKET] [-s STATE_DIR] [-t SECONDS]
# defaults:         /run/mysqld/mysqld.sock  /run/vmsnap-mariadb  30
set -u
socket=/run/mysqld/mysqld.sock state=/run/vmsnap-mariadb wait=30
while getopts S:s:t: opt; do
    case $opt in
        S) socket=$OPTARG ;; s) state=$OPTARG ;; t) wait=$OPTARG ;;
        *) echo "usage: $0 [-S socket] [-s state-dir] [-t seconds]"; exit 2 ;;
    esac
done
client=$(command -v mariadb || command -v mysql) || { echo "no mariadb or mysql client in PATH"; exit 1; }

release() {   # end the session: closing the FIFO's last writer ends the client
    [ -f "$state/holder.pid" ] && kill "$(cat "$state/holder.pid")" 2>/dev/null
    rm -f "$state/holder.pid"
}

if [ -f "$state/holder.pid" ] && kill -0 "$(cat "$state/holder.pid")" 2>/dev/null; then
    echo "a lock session from an earlier run is still open: releasing it"
    release
fi
rm -rf "$state"
mkdir -m 700 -p "$state" && mkfifo -m 600 "$state/in" || { echo "cannot make $state"; exit 1; }

# The session: reads statements from the FIFO until its last writer closes it.
(
    "$client" --socket="$socket" -N -B --unbuffered < "$state/in" > "$state/out" 2>&1 &
    echo $! > "$state/client.pid"
    wait $!
    echo "session ended $?" >> "$state/out"
) </dev/null >/dev/null 2>&1 &
# The holder keeps the FIFO's write end open after this script exits.
sleep 2147483647 > "$state/in" 2>/dev/null </dev/null &
echo $! > "$state/holder.pid"

printf "FLUSH TABLES WITH READ LOCK;\nSELECT CONCAT('LOCKED ', CONNECTION_ID());\n" > "$state/in"

i=0
while [ $i -lt $((wait * 20)) ]; do
    if grep -q '^LOCKED ' "$state/out" 2>/dev/null; then
        echo "read lock held by session $(sed -n 's/^LOCKED //p' "$state/out")"
        exit 0
    fi
    if grep -q '^session ended' "$state/out" 2>/dev/null; then
        break
    fi
    sleep 0.05; i=$((i + 1))
done
echo "could not take the read lock:"
cat "$state/out" 2>/dev/null
release
exit 1
