#!/bin/bash
# dsm-ping.sh - health check for keepalived's track_script: exit 0 when the dsm node at
# HOST:PORT answers the protocol PING (command 1) with an empty OK reply, 1 otherwise.
# bash builtins only (/dev/tcp, read, printf): one process, a few milliseconds of CPU, where
# a Node start cost ~140 ms; under load it was the check, not VRRP, that stretched failover
# (docs/reliability.md).
#
# Usage: dsm-ping.sh HOST:PORT [REPLY_COMMAND] [TIMEOUT_MS=800]
#   REPLY_COMMAND: 100 tracker, 101 id server, 102 storage; omitted or 0 = any of them.
# Frame header (10 bytes): body length i64 BE, command u8, status u8 (0 = OK).
set -u

addr=${1-}
want=${2-0}
ms=${3-800}
usage() {
  echo 'usage: dsm-ping.sh HOST:PORT [REPLY_COMMAND] [TIMEOUT_MS]' >&2
  exit 2
}
if [[ $addr =~ ^\[([^]]+)\]:([0-9]{1,5})$ ]] || [[ $addr =~ ^([^:]+):([0-9]{1,5})$ ]]; then
  host=${BASH_REMATCH[1]}
  port=${BASH_REMATCH[2]}
else
  usage
fi
[[ $want =~ ^[0-9]{1,3}$ && $ms =~ ^[0-9]{1,6}$ ]] || usage
fail() {
  echo "dsm-ping $addr: $*" >&2
  exit 1
}

# Builtins only (one process): connect, send PING, read the 10-byte reply header byte by byte
# (read -d '' stops at a NUL, which leaves the variable empty), all before the deadline.
# The connect itself has no limit of its own: the address is the local node (127.0.0.1),
# which accepts or refuses at once; keepalived's own `timeout` bounds anything else.
export LC_ALL=C
deadline=$((${EPOCHREALTIME/./} + ms * 1000))
{ exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || fail "cannot connect"
printf '\0\0\0\0\0\0\0\0\1\0' >&3 || fail "cannot send"
b=()
while [ "${#b[@]}" -lt 10 ]; do
  left=$((deadline - ${EPOCHREALTIME/./}))
  [ "$left" -gt 0 ] || fail "no reply within $ms ms"
  printf -v t '%d.%06d' $((left / 1000000)) $((left % 1000000))
  IFS= read -r -d '' -n 1 -t "$t" -u 3 c
  rc=$?
  if [ "$rc" -gt 128 ]; then fail "no reply within $ms ms"; fi
  if [ -z "$c" ]; then
    [ "$rc" -eq 0 ] || fail "connection closed before the reply"
    b+=(0)
  else
    printf -v n '%d' "'$c"
    b+=($((n & 255)))
  fi
done
exec 3>&-
[ "${b[*]:0:8}" = "0 0 0 0 0 0 0 0" ] || fail "unexpected body length"
[ "${b[9]}" -eq 0 ] || fail "error reply (status ${b[9]})"
case ${b[8]} in
  100 | 101 | 102) [ "$want" -eq 0 ] || [ "${b[8]}" -eq "$want" ] || fail "unexpected reply command ${b[8]}" ;;
  *) fail "unexpected reply command ${b[8]}" ;;
esac
exit 0
