#!/bin/sh
# vmsnap (and Azure Backup) post-script for PostgreSQL: nothing was paused, so
# only check that the server answers after the thaw.
#
# postScriptParams: [-h SOCKET_DIR_OR_HOST] [-p PORT] [-U OS_USER] [-d DATABASE]
set -u
host=/var/run/postgresql port=5432 osuser=postgres db=postgres
while getopts h:p:U:d: opt; do
    case $opt in
        h) host=$OPTARG ;; p) port=$OPTARG ;; U) osuser=$OPTARG ;; d) db=$OPTARG ;;
        *) echo "usage: $0 [-h host] [-p port] [-U os-user] [-d database]"; exit 2 ;;
    esac
done
if runuser -u "$osuser" -- psql -X -q -A -t -h "$host" -p "$port" -d "$db" -c "SELECT 1" >/dev/null; then
    echo "server answers"
    exit 0
fi
echo "server on $host:$port does not answer after the thaw"
exit 1
