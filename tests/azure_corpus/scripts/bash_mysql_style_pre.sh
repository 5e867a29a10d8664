#!/bin/bash
# Written for vmsnap's corpus: the bash habits found in published MySQL
# pre-scripts (a bash #! line that Azure's `sh` ignores), not their text.
source /etc/default/mysql-backup 2>/dev/null
function log_line {
    echo "$(date) $*" >> /var/log/mysql-backup.log
}
if [[ -z "$MYSQL_HOST" ]]; then MYSQL_HOST=localhost; fi
opts=(--host "$MYSQL_HOST" --batch)
mysql "${opts[@]}" <<< "FLUSH TABLES WITH READ LOCK; SELECT SLEEP(600);" &
echo $! > /run/mysql-backup.pid
if [ "$?" == "0" ]; then log_line "locked"; fi
