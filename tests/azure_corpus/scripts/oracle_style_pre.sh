# Written for vmsnap's corpus in the SHAPE of Microsoft's Oracle example
# (no #! line: Azure always runs `sh SCRIPT`); not Microsoft's text.
# Puts the database in backup mode through sqlplus, fed by a here-document.
ORACLE_SID=${1:-ORCL}
export ORACLE_SID
su - oracle -c "sqlplus -s / as sysdba" <<EOF
whenever sqlerror exit failure
alter system archive log current;
alter database begin backup;
exit
EOF
