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

. "$(dirname "$0")/rabbitmq-node.sh"

if [ "${2:-}" = "stop" ]; then
    stop_node "$node"
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

# The node on the port is this STATE_DIR's (another checkout's may be there: its server
# certificate, of another CA, would fail every test) and its certificate has a day left.
running_with_these_certs() {
    answers "$tls_port" && [ -f "$certs/server.pem" ] && [ -f "$state/started" ] &&
        openssl x509 -in "$certs/server.pem" -noout -checkend 86400 >/dev/null || return 1
    local served ours
    served="$(openssl s_client -connect "localhost:$tls_port" -servername localhost </dev/null 2>/dev/null |
        openssl x509 -noout -fingerprint -sha256 2>/dev/null)" || return 1
    ours="$(openssl x509 -in "$certs/server.pem" -noout -fingerprint -sha256)"
    [ "$served" = "$ours" ]
}

if ! running_with_these_certs; then
    if answers "$tls_port"; then
        stop_node "$node"
        for _ in $(seq 1 60); do answers "$tls_port" || break; sleep 0.5; done
    fi
    rm -f "$state/started"
    make_certs
    rm -rf "$state/mnesia"
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
    start_node "$node" "$port" "$state" "[rabbitmq_auth_mechanism_ssl]" "$tls_port"
    rabbitmqctl -n "$node" await_startup >/dev/null
    # The user SASL EXTERNAL finds in client.pem (it has a password no one knows).
    rabbitmqctl -n "$node" add_user hostworker "$(head -c 18 /dev/urandom | base64)" >/dev/null
    rabbitmqctl -n "$node" set_permissions -p / hostworker '.*' '.*' '.*' >/dev/null
    touch "$state/started"
fi
echo "$tls_port"
