#!/usr/bin/env bash
# Prepare the build host (the "controller") for the local lab: the Docker engine, debootstrap, an SSH client and
# Python's venv support, then make sure a Docker daemon answers.
#
# Safe to run again: it installs only what is missing and starts dockerd only if nothing answers on the socket.
# A dockerd started here writes its PID to $MODELSWARM_DOCKERD_PIDFILE so that `scripts/engine-stop.sh` can stop
# exactly that process and nothing else.
set -euo pipefail

PIDFILE=${MODELSWARM_DOCKERD_PIDFILE:-/run/modelswarm/dockerd.pid}
LOGFILE=${MODELSWARM_DOCKERD_LOG:-/var/log/modelswarm-dockerd.log}
WAIT_SECONDS=${MODELSWARM_DOCKERD_WAIT:-60}

die() { echo "engine-bootstrap: $*" >&2; exit 1; }
say() { echo "engine-bootstrap: $*"; }

[ "$(uname -s)" = "Linux" ] || die "the local lab needs Linux (found $(uname -s)). Use real servers instead: see README.md, 'Real servers'."
[ "$(id -u)" = "0" ] || die "run as root (the lab starts containers with extra capabilities and may start dockerd). Try: sudo $0"
command -v apt-get >/dev/null 2>&1 || die "no apt-get found: this bootstrap supports Debian and Ubuntu build hosts only. Install Docker, debootstrap, an SSH client and python3-venv yourself, then run 'make demo' again."

# package -> a command (or python import) that proves it is there
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
command -v make >/dev/null 2>&1 || missing+=(make)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v hey >/dev/null 2>&1 || missing+=(hey)  # the HTTP load generator of the HA tests and benchmarks

if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from the distribution's repositories"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "packages present (docker.io, debootstrap, openssh-client, make, python3-venv, hey)"
fi

if docker info >/dev/null 2>&1; then
  say "a Docker daemon already answers: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
  exit 0
fi

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  say "starting docker.service with systemd"
  systemctl enable --now docker >/dev/null
else
  # No systemd (containers, CI sandboxes): run dockerd ourselves and remember its PID.
  if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    say "dockerd (pid $(cat "$PIDFILE")) is starting; waiting for it"
  else
    mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOGFILE")"
    say "no systemd: starting dockerd in the background (log: $LOGFILE)"
    nohup dockerd >>"$LOGFILE" 2>&1 &
    echo $! >"$PIDFILE"
  fi
fi

for _ in $(seq 1 "$WAIT_SECONDS"); do
  if docker info >/dev/null 2>&1; then
    say "Docker daemon answers: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
    exit 0
  fi
  sleep 1
done
echo "engine-bootstrap: dockerd did not answer within ${WAIT_SECONDS}s; last lines of $LOGFILE:" >&2
tail -n 20 "$LOGFILE" >&2 || true
exit 1
