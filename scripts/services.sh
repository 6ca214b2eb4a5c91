#!/usr/bin/env bash
# Makes sure the local services a test run needs are reachable on loopback.
#
#   scripts/services.sh check [redis|postgres|mariadb|rabbitmq ...]
#
# For each named service: probe it on 127.0.0.1; if it does not answer, start
# it with the same command the machine used before the session began
# (machines/rust-svc.md in the env skill), then wait up to
# FLASHSALE_SERVICE_WAIT_SECS (default 60) for it to answer. Exits non-zero,
# naming the service, when one still cannot be reached. Services found
# running are left alone, and nothing is ever stopped.
#
# For rabbitmq it also makes sure the management plugin is enabled and its
# HTTP API answers on 15672: the order writer's re-seed reads unacknowledged
# deliveries from it (docs/OPERATIONS.md, "Queue depth"). Enabling a plugin
# on a running broker needs no restart, and an enabled one is left alone.
#
# The embedded default needs none of these; the scale-out backends (issue #3)
# will. Tests must still isolate themselves (own key prefix, schema, vhost):
# the services are shared by every test and by CI.
set -euo pipefail

WAIT_SECS="${FLASHSALE_SERVICE_WAIT_SECS:-60}"
KNOWN="redis postgres mariadb rabbitmq"

usage() {
    echo "usage: $0 check [redis|postgres|mariadb|rabbitmq ...]" >&2
    exit 2
}

# True when 127.0.0.1:$1 accepts a TCP connection within 2 s.
tcp_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# probe NAME: true when the service answers on loopback.
probe() {
    case "$1" in
        redis)
            [ "$(timeout 5 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
            ;;
        postgres)
            timeout 5 pg_isready -q -h 127.0.0.1 -p 5432
            ;;
        mariadb)
            timeout 5 mariadb-admin ping --silent -h127.0.0.1 -P3306 -uroot >/dev/null 2>&1
            ;;
        rabbitmq)
            # The AMQP listener is what clients need; it opens last at boot.
            tcp_open 5672
            ;;
    esac
}

# start NAME: the start commands of machines/rust-svc.md, verbatim.
start() {
    case "$1" in
        redis)
            redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
                --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
            ;;
        postgres)
            # shellcheck disable=SC2046 # one cluster version directory is expected
            pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
            ;;
        mariadb)
            start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
            ;;
        rabbitmq)
            rabbitmq-server -detached
            ;;
    esac
}

# canonical NAME: accepts a few common aliases.
canonical() {
    case "$1" in
        redis) echo redis ;;
        postgres | postgresql | pg) echo postgres ;;
        mariadb | mysql) echo mariadb ;;
        rabbitmq | rabbit | amqp) echo rabbitmq ;;
        *) return 1 ;;
    esac
}

# management: enables RabbitMQ's management plugin when its port is closed
# (idempotent: `enable` of an enabled plugin is a no-op) and waits for it.
management() {
    local waited=0
    if tcp_open 15672; then
        return 0
    fi
    echo "services: enabling rabbitmq_management (HTTP API on 15672)"
    # A broker still booting may refuse the CLI although the plugin is
    # enabled already and about to listen: the port decides below.
    if ! rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1; then
        echo "services: rabbitmq-plugins enable failed; waiting for 15672 anyway" >&2
    fi
    while [ "$waited" -lt "$WAIT_SECS" ]; do
        if tcp_open 15672; then
            echo "services: rabbitmq management API is up (after ${waited}s)"
            return 0
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "services: ERROR: the rabbitmq management API is still closed after ${WAIT_SECS}s" >&2
    return 1
}

# up NAME: what a service needs once it answers (only RabbitMQ needs more).
up() {
    case "$1" in
        rabbitmq) management ;;
        *) return 0 ;;
    esac
}

check() {
    local name="$1" waited=0
    if probe "$name"; then
        echo "services: $name is up"
        up "$name"
        return
    fi
    echo "services: $name is not answering on 127.0.0.1; starting it"
    if ! start "$name"; then
        echo "services: the start command for $name failed" >&2
    fi
    while [ "$waited" -lt "$WAIT_SECS" ]; do
        if probe "$name"; then
            echo "services: $name is up (after ${waited}s)"
            up "$name"
            return
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "services: ERROR: $name is still unreachable on 127.0.0.1 after ${WAIT_SECS}s" >&2
    return 1
}

main() {
    [ "$#" -ge 1 ] || usage
    local cmd="$1"
    shift
    [ "$cmd" = "check" ] || usage
    local failed=() name svc
    for name in "$@"; do
        if ! svc="$(canonical "$name")"; then
            echo "services: ERROR: unknown service '$name' (known: $KNOWN)" >&2
            exit 2
        fi
        check "$svc" || failed+=("$svc")
    done
    if [ "${#failed[@]}" -gt 0 ]; then
        echo "services: ERROR: unreachable: ${failed[*]}" >&2
        exit 1
    fi
}

main "$@"
