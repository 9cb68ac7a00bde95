# Sourced by scripts/bench-server.sh and scripts/bench-redis-connections.sh:
# the server configuration both benchmark, written to $WORK/tollgate.yaml
# (HTTP on $HTTP_PORT, gRPC on $GRPC_PORT): one GCRA policy of 10^6 per
# second that a benchmark never reaches, over the JSON API and one Envoy
# domain.
config() { # $1: the store section's lines
  cat > "$WORK/tollgate.yaml" <<YAML
server:
  http: 127.0.0.1:$HTTP_PORT
  grpc: 127.0.0.1:$GRPC_PORT
store:
$1
policies:
  - name: bench
    algorithm: gcra
    limit: 1000000
    period: 1s
domains:
  - domain: bench
    descriptors:
      - key: client
        policy: bench
YAML
}
