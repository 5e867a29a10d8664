#!/bin/sh
# /etc/google/snapshots/pre.sh: the Google guest agent runs it before a
# guest-flush snapshot with one argument, the list of disks.  vmsnap runs
# the pre-script and hooks and freezes (the guest agent freezes nothing).
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
exec vmsnap hook gce pre "$@"
