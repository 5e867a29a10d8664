#!/bin/sh
# /etc/google/snapshots/post.sh: after the snapshot; vmsnap thaws, then runs
# the thaw hooks and the post-script.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
exec vmsnap hook gce post "$@"
