#!/bin/sh
# How deploy/compose.yaml starts a Coffer node, and its health check. The coffer image has
# no shell: busybox's comes from the `tools` volume, filled from the toolbox image.
#
#   coffer-node.sh first-manager  # `manager init` on the first start, `manager run` after
#   coffer-node.sh manager        # `manager join` once (the first manager's token), then `run`
#   coffer-node.sh worker         # `worker join` once (the worker token), then `worker run`
#   coffer-node.sh ready          # health check: this manager's own readiness
#
# A join token only ever sits in a file on a tmpfs volume that only the nodes mount, and
# reaches `coffer` through --token-file: never an argument (the process list), an
# environment variable (docker inspect) or a log line (docker logs). `manager init` prints
# the tokens once, into a pipe this script reads.
#
# Environment: COFFER_IP (this node's address on the compose network; managers are dialled
# there, and it is the only name in their certificates) and COFFER_JOIN (the first
# manager's address:port).
set -eu

data=/var/lib/coffer
join=/run/coffer/join               # managers only: the manager token, the admin bundle
worker_join=/run/coffer/worker-join # the worker token
port=7370

say() { echo "coffer-node: $*" >&2; }

# Waits until FILE exists and is not empty.
wait_for() {
  if [ ! -s "$1" ]; then
    say "waiting for $1 (written by the first manager)"
    while [ ! -s "$1" ]; do sleep 1; done
  fi
}

# Copies the admin bundle of the first manager's data dir where every manager finds it
# (COFFER_CLIENT_DIR): for `docker exec ... coffer` and the health checks.
publish_bundle() {
  [ -d "$data/client" ] || return 0
  rm -rf "$join/client.new"
  mkdir -m 0700 "$join/client.new"
  cp "$data/client/ca.pem" "$data/client/client.pem" "$data/client/client.key" "$join/client.new/"
  chmod 0600 "$join/client.new/client.key"
  rm -rf "$join/client"
  mv "$join/client.new" "$join/client"
}

# Reads `manager init --format json`'s event lines to their end; on the one with the join
# tokens, writes each to its file (whole, then renamed: a joiner never reads half of one).
save_tokens() {
  while IFS= read -r line; do
    case $line in
      *'"event":"initialized"'*)
        umask 077
        printf '%s\n' "$line" | sed -n 's/.*"worker_token":"\([^"]*\)".*/\1/p' >"$worker_join/worker-token.new"
        printf '%s\n' "$line" | sed -n 's/.*"manager_token":"\([^"]*\)".*/\1/p' >"$join/manager-token.new"
        mv "$worker_join/worker-token.new" "$worker_join/worker-token"
        mv "$join/manager-token.new" "$join/manager-token"
        publish_bundle
        say "cluster created; join tokens written for the other nodes"
        ;;
    esac
  done
}

first_manager() {
  chmod 0700 "$data"
  if [ -e "$data/node.json" ]; then
    publish_bundle
    exec coffer manager run --data-dir "$data"
  fi
  fifo=/tmp/coffer-init.out
  rm -f "$fifo"
  mkfifo -m 0600 "$fifo"
  save_tokens <"$fifo" &
  coffer manager init --data-dir "$data" --listen "0.0.0.0:$port" --advertise "$COFFER_IP:$port" \
    --hostname "$(hostname)" --format json >"$fifo" &
  pid=$!
  # This shell is the container's first process: pass `docker stop` on, and wait for the
  # manager's clean exit. The restart policy brings it back with `manager run`.
  trap 'kill -TERM "$pid" 2>/dev/null || true' TERM INT
  status=0
  while :; do
    wait "$pid" && status=0 || status=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  wait # the token reader, which ends with the manager's output
  rm -f "$fifo"
  exit "$status"
}

manager() {
  chmod 0700 "$data"
  if [ -e "$data/node.json" ]; then
    exec coffer manager run --data-dir "$data"
  fi
  wait_for "$join/manager-token"
  exec coffer manager join --data-dir "$data" --listen "0.0.0.0:$port" --advertise "$COFFER_IP:$port" \
    --hostname "$(hostname)" --token-file "$join/manager-token" --join "$COFFER_JOIN"
}

worker() {
  chmod 0700 "$data"
  if [ -e "$data/node.json" ]; then
    exec coffer worker run --data-dir "$data"
  fi
  wait_for "$worker_join/worker-token"
  exec coffer worker join --data-dir "$data" --secrets-dir /run/coffer/secrets --hostname "$(hostname)" \
    --token-file "$worker_join/worker-token" --join "$COFFER_JOIN"
}

# What /readyz answers (a leader known, committed entries applied), as this manager sees
# it. (compose.yaml's health check runs `coffer cluster ready` itself, with no shell.)
ready() {
  exec coffer cluster ready >/dev/null
}

case "${1:-}" in
  first-manager) first_manager ;;
  manager) manager ;;
  worker) worker ;;
  ready) ready ;;
  *)
    say "usage: coffer-node.sh first-manager|manager|worker|ready"
    exit 2
    ;;
esac
