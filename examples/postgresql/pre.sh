#!/bin/sh
# vmsnap (and Azure Backup) pre-script for PostgreSQL: CHECKPOINT before the freeze,
# so that the snapshot needs little WAL replay when it is restored.
#
# preScriptParams: [-h SOCKET_DIR_OR_HOST] [-p PORT] [-U OS_USER] [-d DATABASE]
# defaults:          /var/run/postgresql     5432      postgres     postgres
set -u
host=/var/run/postgresql port=5432 osuser=postgres db=postgres
while getopts h:p:U:d: opt; do
    case $opt in
        h) host=$OPTARG ;; p) port=$OPTARG ;; U) osuser=$OPTARG ;; d) db=$OPTARG ;;
        *) echo "usage: $0 [-h host] [-p port] [-U os-user] [-d database]"; exit 2 ;;
    esac
done
psql_() { runuser -u "$osuser" -- psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$host" -p "$port" -d "$db" "$@"; }

if ! psql_ -c "CHECKPOINT" >/dev/null; then
    echo "CHECKPOINT failed on $host:$port"
    exit 1
fi
echo "checkpoint done, WAL at $(psql_ -c 'SELECT pg_current_wal_lsn()')"
exit 0
