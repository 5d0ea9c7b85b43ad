#!/bin/sh
# fenced-append.sh FILE TOKEN TEXT: appends "TOKEN TEXT" to FILE unless a
# write with a greater fencing token was already accepted. The resource,
# not the lock holder, decides: a holder paused past its lock's expiry
# wakes up with an old token and is refused here.
#   charter lock run reports -- sh -c 'fenced-append.sh out.log "$CHARTER_LOCK_TOKEN" done'
set -eu
file=$1 token=$2; shift 2
case $token in '' | *[!0-9]*) echo "fenced-append: token '$token' is not a number" >&2; exit 2 ;; esac
exec 9>>"$file.fence"              # the highest token seen, beside the file
flock 9                             # one writer at a time decides and writes
seen=$(cat "$file.fence.last" 2>/dev/null || echo 0)
if [ "$token" -lt "$seen" ]; then
    echo "fenced-append: refused token $token: token $seen already wrote to $file" >&2
    exit 3
fi
echo "$token" > "$file.fence.last"
printf '%s %s\n' "$token" "$*" >> "$file"
