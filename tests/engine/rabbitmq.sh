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

. "$(dirname "$0")/rabbitmq-node.sh"

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
    mkdir -p "$state"
    state="$(cd "$state" && pwd)"
    # A config of its own: the machine's /etc/rabbitmq/rabbitmq.conf may pin the listener to
    # 5672. (guest may connect over loopback only, which is all the tests do.)
    echo "listeners.tcp.default = $port" > "$state/rabbitmq.conf"
    start_node "hosttests@localhost" "$port" "$state" "[]" "$port"
fi
echo "amqp://guest:guest@127.0.0.1:$port/%2f"
