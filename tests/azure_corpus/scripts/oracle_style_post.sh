# Written for vmsnap's corpus in the SHAPE of Microsoft's Oracle example
# (no #! line); not Microsoft's text.  Ends backup mode.
ORACLE_SID=${1:-ORCL}
export ORACLE_SID
su - oracle -c "sqlplus -s / as sysdba" <<EOF
whenever sqlerror exit failure
alter database end backup;
exit
EOF
