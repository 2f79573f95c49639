#!/usr/bin/env bash
# A RabbitMQ broker for the worker's AMQP tests; prints its URL once it answers.
#
# Usage: rabbitmq.sh STATE_DIR
#   1. AMQP_URL, when set;
#   2. else amqp://guest:guest@127.0.0.1:5672/%2f when something listens there (this
#      project's machines run RabbitMQ there);
#   3. else Debian's rabbitmq-server, installed with apt-get when missing (needs root), started
#      as a node of its own on a private port (25672 + 5), with its files under STATE_DIR.
set -euo pipefail

state="${1:?usage: rabbitmq.sh STATE_DIR}"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -n "${AMQP_URL:-}" ]; then
    echo "$AMQP_URL"
    exit 0
fi
if answers 5672; then
    echo "amqp://guest:guest@127.0.0.1:5672/%2f"
    exit 0
fi

port=25677
if ! answers "$port"; then
    if ! command -v rabbitmq-server >/dev/null; then
        echo "installing rabbitmq-server" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends rabbitmq-server >&2
    fi
    mkdir -p "$state"
    state="$(cd "$state" && pwd)"
    export RABBITMQ_NODENAME="hosttests@localhost"
    export RABBITMQ_NODE_PORT="$port"
    export RABBITMQ_DIST_PORT=$((port + 20000))
    export RABBITMQ_MNESIA_BASE="$state/mnesia"
    export RABBITMQ_LOG_BASE="$state/log"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$state/enabled_plugins"
    echo "[]." > "$state/enabled_plugins"
    # A config of its own: the machine's /etc/rabbitmq/rabbitmq.conf may pin the listener to
    # 5672. (guest may connect over loopback only, which is all the tests do.)
    echo "listeners.tcp.default = $port" > "$state/rabbitmq.conf"
    export RABBITMQ_CONFIG_FILE="$state/rabbitmq.conf"
    # Debian's wrapper runs the node as the rabbitmq user: its files must be that user's.
    if id rabbitmq >/dev/null 2>&1; then
        chown -R rabbitmq: "$state"
    fi
    echo "starting rabbitmq-server on port $port" >&2
    rabbitmq-server -detached >&2
    for _ in $(seq 1 240); do
        answers "$port" && break
        sleep 0.5
    done
    answers "$port" || { echo "rabbitmq-server did not start; see $state/log" >&2; exit 1; }
fi
echo "amqp://guest:guest@127.0.0.1:$port/%2f"
