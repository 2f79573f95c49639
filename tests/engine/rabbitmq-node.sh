# Sourced by rabbitmq.sh and rabbitmq-tls.sh: a private RabbitMQ node of the tests.

# answers PORT: something listens on 127.0.0.1:PORT.
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_node NODE PORT STATE PLUGINS WAIT_PORT: starts Debian's rabbitmq-server (installed
# with apt-get when missing; needs root) as node NODE with plain AMQP on PORT, its files
# under STATE (which must hold its rabbitmq.conf), the plugins PLUGINS enabled (an Erlang
# list, e.g. "[]"), and waits until WAIT_PORT answers.
start_node() {
    local node="$1" port="$2" state="$3" plugins="$4" wait_port="$5"
    if ! command -v rabbitmq-server >/dev/null; then
        echo "installing rabbitmq-server" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends rabbitmq-server >&2
    fi
    export RABBITMQ_NODENAME="$node"
    export RABBITMQ_NODE_PORT="$port"
    export RABBITMQ_DIST_PORT=$((port + 20000))
    export RABBITMQ_MNESIA_BASE="$state/mnesia"
    export RABBITMQ_LOG_BASE="$state/log"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$state/enabled_plugins"
    export RABBITMQ_CONFIG_FILE="$state/rabbitmq.conf"
    echo "$plugins." >"$state/enabled_plugins"
    # Debian's wrapper runs the node as the rabbitmq user: its files must be that user's.
    if id rabbitmq >/dev/null 2>&1; then
        chown -R rabbitmq: "$state"
    fi
    echo "starting rabbitmq-server $node on port $wait_port" >&2
    rabbitmq-server -detached >&2
    for _ in $(seq 1 240); do
        answers "$wait_port" && break
        sleep 0.5
    done
    answers "$wait_port" || { echo "rabbitmq-server did not start; see $state/log" >&2; exit 1; }
}
