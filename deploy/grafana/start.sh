#!/bin/sh
# Grafana's entry point in deploy/compose.yaml: Grafana never starts with a default admin password.
#
# GRAFANA_ADMIN_PASSWORD set: that password. Unset: a random one, generated on the first start into the data
# volume and reused after (read it with `docker compose -f deploy/compose.yaml exec grafana cat <file>`).
# Grafana stores the admin password in its database when it creates it, so either applies to a new grafana-data
# volume only; change it later with `grafana cli admin reset-admin-password`.
#
# GRAFANA_PASSWORD_FILE  where the generated password lives  (default /var/lib/grafana/admin-password)
# GRAFANA_RUN            Grafana's own entry point            (default /run.sh, the image's)
set -eu
file="${GRAFANA_PASSWORD_FILE:-/var/lib/grafana/admin-password}"
if [ -n "${GRAFANA_ADMIN_PASSWORD:-}" ]; then
    GF_SECURITY_ADMIN_PASSWORD="$GRAFANA_ADMIN_PASSWORD"
else
    if [ ! -s "$file" ]; then
        # 32 random bytes, kept to [A-Za-z0-9]: about 40 characters, ~240 bits
        (umask 077 && head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$file.tmp" && mv "$file.tmp" "$file")
        echo "grafana: generated an admin password (user admin); read it with: cat $file" >&2
    fi
    GF_SECURITY_ADMIN_PASSWORD="$(cat "$file")"
fi
export GF_SECURITY_ADMIN_PASSWORD
exec "${GRAFANA_RUN:-/run.sh}" "$@"
