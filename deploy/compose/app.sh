#!/bin/sh
# The example app of deploy/compose.yaml. It reads its secret from the tmpfs volume that
# worker-1 fills (a task's directory is its service's name and its slot, from 0) each
# time it needs it, so a rotation reaches it without a restart.
secret=/run/secrets/app.0/db_password
trap 'exit 0' TERM INT
if [ ! -r "$secret" ]; then
  echo "app: waiting for $secret (create the secret and the app service: see README.md)"
  until [ -r "$secret" ]; do sleep 1 & wait $!; done
fi
echo "app: $secret is here ($(wc -c <"$secret") bytes)"
while :; do sleep 3600 & wait $!; done
