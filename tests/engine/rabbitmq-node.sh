# Sourced by rabbitmq.sh and rabbitmq-tls.sh: a private RabbitMQ node of the tests.

# answers PORT: something listens on 127.0.0.1:PORT.
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# node_registered NODE: a node of that name is still known to epmd (up, or still stopping).
node_registered() {
    epmd -names 2>/dev/null | grep -q "^name ${1%@*} at port "
}

# stop_node NODE: stops it and waits until it is gone (rabbitmqctl stop returns before the
# node's VM has exited; a node started meanwhile under the same name does not start).
stop_node() {
    rabbitmqctl -n "$1" stop >/dev/null 2>&1 || true
    for _ in $(seq 1 120); do
        node_registered "$1" || return 0
        sleep 0.5
    done
}

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
    # The distribution port below Linux's ephemeral range (32768-60999): port+20000 was
    # there, and a client connection that happened to hold it as its local port stopped the
    # node from starting (dist_port_already_used ... not_erlang, seen in CI).
    export RABBITMQ_DIST_PORT=$((port + 1000))
    export RABBITMQ_MNESIA_BASE="$state/mnesia"
    export RABBITMQ_LOG_BASE="$state/log"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$state/enabled_plugins"
    export RABBITMQ_CONFIG_FILE="$state/rabbitmq.conf"
    echo "$plugins." >"$state/enabled_plugins"
    # Debian's wrapper runs the node as the rabbitmq user: its files must be that user's.
    if id rabbitmq >/dev/null 2>&1; then
        chown -R rabbitmq: "$state"
    fi
    # A node of the same name still stopping (another test binary's) would make this one
    # fail to start, silently: wait for it to be gone.
    for _ in $(seq 1 120); do
        node_registered "$node" || break
        sleep 0.5
    done
    echo "starting rabbitmq-server $node on port $wait_port" >&2
    rabbitmq-server -detached >&2
    for _ in $(seq 1 240); do
        answers "$wait_port" && break
        sleep 0.5
    done
    answers "$wait_port" || {
        # A node that dies before its log starts leaves only a crash dump, in the rabbitmq
        # user's home: its first line says why.
        local why
        why="$(grep -m1 '^Slogan' /var/lib/rabbitmq/erl_crash.dump 2>/dev/null || true)"
        echo "rabbitmq-server did not start; see $state/log; $why; epmd knows: $(epmd -names 2>&1 | tr '\n' ' ')" >&2
        exit 1
    }
}
