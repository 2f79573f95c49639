#!/usr/bin/env bash
# A RabbitMQ node with a TLS listener for the worker's TLS tests, with certificates made here.
#
# Usage: rabbitmq-tls.sh STATE_DIR         start it (or keep the one running); print its port
#        rabbitmq-tls.sh STATE_DIR stop    stop it
#
# The node is a private one (name hosttls@localhost; plain AMQP on 25680, TLS on 25681), from
# Debian's rabbitmq-server (installed with apt-get when missing; needs root), its files under
# STATE_DIR. STATE_DIR/certs gets, made with openssl at the first start:
#   ca.pem, ca.key              the CA the broker trusts and the tests give the worker
#   server.pem, server.key      the broker's certificate: DNS:localhost only (so 127.0.0.1 is
#                               a name mismatch)
#   client.pem, client.key      a client certificate of the CA, CN=hostworker (the user of
#                               SASL EXTERNAL; the node gets that user)
#   rogue-ca.pem, rogue.pem, rogue.key   a client certificate of another CA (refused)
#   expired.pem, expired.key    a server certificate of the CA for localhost, already expired
# The listener asks for a client certificate and refuses one it cannot verify, but takes a
# client without one (password login); EXTERNAL takes the user from the certificate's CN.
set -euo pipefail

state="${1:?usage: rabbitmq-tls.sh STATE_DIR [stop]}"
node="hosttls@localhost"
port=25680
tls_port=25681

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ "${2:-}" = "stop" ]; then
    rabbitmqctl -n "$node" stop >/dev/null 2>&1 || true
    exit 0
fi

mkdir -p "$state"
state="$(cd "$state" && pwd)"
certs="$state/certs"

make_certs() {
    rm -rf "$certs"
    mkdir -p "$certs"
    cd "$certs"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 30 -subj "/CN=host tests CA" 2>/dev/null
    openssl req -x509 "${ec[@]}" -keyout rogue-ca.key -out rogue-ca.pem -days 30 -subj "/CN=rogue CA" 2>/dev/null
    # cert NAME CA DAYS SUBJECT EXTENSIONS
    cert() {
        openssl req "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "$4" 2>/dev/null
        printf '%b' "$5" >"$1.ext"
        openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial \
            -days "$3" -extfile "$1.ext" -out "$1.pem" 2>/dev/null
        rm -f "$1.csr" "$1.ext"
    }
    local server='subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n'
    local client='basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n'
    cert server ca 30 "/CN=localhost" "$server"
    cert client ca 30 "/CN=hostworker" "$client"
    cert rogue rogue-ca 30 "/CN=hostworker" "$client"
    # -days 0: valid for no time at all, so expired a second later.
    cert expired ca 0 "/CN=localhost" "$server"
    cd - >/dev/null
}

running_with_these_certs() {
    answers "$tls_port" && [ -f "$certs/server.pem" ] && [ -f "$state/started" ] &&
        openssl x509 -in "$certs/server.pem" -noout -checkend 86400 >/dev/null
}

if ! running_with_these_certs; then
    if answers "$tls_port"; then
        rabbitmqctl -n "$node" stop >/dev/null 2>&1 || true
        for _ in $(seq 1 60); do answers "$tls_port" || break; sleep 0.5; done
    fi
    rm -f "$state/started"
    if ! command -v rabbitmq-server >/dev/null; then
        echo "installing rabbitmq-server" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends rabbitmq-server >&2
    fi
    make_certs
    rm -rf "$state/mnesia"
    export RABBITMQ_NODENAME="$node"
    export RABBITMQ_NODE_PORT="$port"
    export RABBITMQ_DIST_PORT=$((port + 20000))
    export RABBITMQ_MNESIA_BASE="$state/mnesia"
    export RABBITMQ_LOG_BASE="$state/log"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$state/enabled_plugins"
    echo "[rabbitmq_auth_mechanism_ssl]." >"$state/enabled_plugins"
    cat >"$state/rabbitmq.conf" <<EOF
listeners.tcp.default = $port
listeners.ssl.default = $tls_port
ssl_options.cacertfile = $certs/ca.pem
ssl_options.certfile = $certs/server.pem
ssl_options.keyfile = $certs/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
EOF
    export RABBITMQ_CONFIG_FILE="$state/rabbitmq.conf"
    # Debian's wrapper runs the node as the rabbitmq user: its files must be that user's.
    if id rabbitmq >/dev/null 2>&1; then
        chown -R rabbitmq: "$state"
    fi
    echo "starting rabbitmq-server with TLS on port $tls_port" >&2
    rabbitmq-server -detached >&2
    for _ in $(seq 1 240); do
        answers "$tls_port" && break
        sleep 0.5
    done
    answers "$tls_port" || { echo "rabbitmq-server did not start; see $state/log" >&2; exit 1; }
    rabbitmqctl -n "$node" await_startup >/dev/null
    # The user SASL EXTERNAL finds in client.pem (it has a password no one knows).
    rabbitmqctl -n "$node" add_user hostworker "$(head -c 18 /dev/urandom | base64)" >/dev/null
    rabbitmqctl -n "$node" set_permissions -p / hostworker '.*' '.*' '.*' >/dev/null
    touch "$state/started"
fi
echo "$tls_port"
