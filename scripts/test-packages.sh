#!/usr/bin/env bash
# Packages the unit tests run real servers from, on loopback only: PostgreSQL 15 (a throwaway cluster per test
# session, for the ledger, keys and users), NGINX with njs (the key checks that every node runs) and HAProxy (the
# Docker API proxy's allow-lists); Prometheus and Alertmanager for promtool and amtool (the alert rules' and
# configurations' checks); Chromium (headless: the console's pages as a browser renders them).
#
# Installed from the distribution's repositories without starting anything: no default PostgreSQL cluster is
# created and no service is started (policy-rc.d), so the machine runs nothing it did not run before.
# Safe to run again: it installs only what is missing.
set -euo pipefail

say() { echo "test-packages: $*"; }

missing=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_http_js_module.so ] || missing+=(libnginx-mod-http-js)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
[ -x /usr/bin/promtool ] || missing+=(prometheus)
[ -x /usr/bin/amtool ] || missing+=(prometheus-alertmanager)
[ -x /usr/bin/chromium ] || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
  say "present (postgresql-15, nginx-light, libnginx-mod-http-js, haproxy, prometheus, prometheus-alertmanager, chromium)"
  exit 0
fi
[ "$(id -u)" = "0" ] || { echo "test-packages: installing ${missing[*]} needs root" >&2; exit 1; }
command -v apt-get >/dev/null 2>&1 || { echo "test-packages: install ${missing[*]} yourself (no apt-get)" >&2; exit 1; }

say "installing ${missing[*]} (no cluster created, no service started)"
mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/modelswarm-no-main-cluster.conf
policy=/usr/sbin/policy-rc.d
placed_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy" && placed_policy=true
fi
cleanup() { if $placed_policy; then rm -f "$policy"; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
say "installed ${missing[*]}"
