#!/usr/bin/env bash
# Stop the dockerd that scripts/engine-bootstrap.sh started, by the PID it recorded. A daemon started any other way
# (systemd, by hand) is left alone.
set -euo pipefail
PIDFILE=${MODELSWARM_DOCKERD_PIDFILE:-/run/modelswarm/dockerd.pid}
if [ ! -s "$PIDFILE" ]; then
  echo "engine-stop: no pidfile at $PIDFILE: this bootstrap started no dockerd; nothing to stop"
  exit 0
fi
pid=$(cat "$PIDFILE")
if ! kill -0 "$pid" 2>/dev/null; then
  echo "engine-stop: dockerd pid $pid is not running; removing the stale pidfile"
  rm -f "$PIDFILE"
  exit 0
fi
kill -TERM "$pid"
for _ in $(seq 1 30); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "engine-stop: dockerd pid $pid stopped"; exit 0; }
  sleep 1
done
echo "engine-stop: dockerd pid $pid did not stop within 30s" >&2
exit 1
