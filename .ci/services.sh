#!/usr/bin/env bash
# Makes sure MariaDB (127.0.0.1:3306, root, no password) and Redis (127.0.0.1:6379) answer.
# Starts them when they are installed but stopped; a service that cannot be had is an error,
# never a skip.
set -uo pipefail

wait_for() { # name, command
  for _ in $(seq 1 30); do
    if eval "$2" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "services: $1 does not answer" >&2
  return 1
}

mariadb_ok='mariadb -h127.0.0.1 -P3306 -uroot -e "SELECT 1"'
redis_ok='[ "$(redis-cli -h 127.0.0.1 -p 6379 ping)" = PONG ]'

if ! eval "$mariadb_ok" >/dev/null 2>&1; then
  if [ -x /usr/sbin/mariadbd ]; then
    echo "services: starting MariaDB" >&2
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    wait_for MariaDB "$mariadb_ok" || exit 1
  else
    echo "services: MariaDB is not installed (need mariadb-server answering on 127.0.0.1:3306)" >&2
    exit 1
  fi
fi

if ! eval "$redis_ok" >/dev/null 2>&1; then
  if command -v redis-server >/dev/null; then
    echo "services: starting Redis" >&2
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    wait_for Redis "$redis_ok" || exit 1
  else
    echo "services: Redis is not installed (need redis-server answering on 127.0.0.1:6379)" >&2
    exit 1
  fi
fi
echo "services: MariaDB and Redis answer" >&2
