#!/bin/sh
# Start PostgreSQL on the data in $PGDATA, creating the database cluster there on the first start.
#
# First start (no $PGDATA/PG_VERSION yet): initdb with the superuser $POSTGRES_USER and the password from
# $POSTGRES_PASSWORD (or the file $POSTGRES_PASSWORD_FILE), both meant to come from a Secret; the database
# $POSTGRES_DB owned by that user; password (SCRAM-SHA-256) logins only, from anywhere. Later starts use what the
# volume holds: changing the Secret then does not change the password.
# Arguments are passed to the server, e.g. `-c shared_buffers=32MB`.
set -eu

PGDATA="${PGDATA:-/var/lib/postgresql/data/pgdata}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

fail() {
    echo "postgres-entrypoint: $*" >&2
    exit 2
}

# Names go into SQL below; lower-case identifiers need no quoting rules beyond the double quotes.
for name in "$POSTGRES_USER" "$POSTGRES_DB"; do
    case "$name" in
        "" | [0-9_]* | *[!a-z0-9_]*) fail "POSTGRES_USER and POSTGRES_DB must be lower-case letters, digits and _ (starting with a letter), got '$name'" ;;
    esac
done

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password="${POSTGRES_PASSWORD:-}"
    if [ -z "$password" ] && [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        [ -r "$POSTGRES_PASSWORD_FILE" ] || fail "cannot read POSTGRES_PASSWORD_FILE $POSTGRES_PASSWORD_FILE"
        password="$(cat "$POSTGRES_PASSWORD_FILE")"
    fi
    [ -n "$password" ] || fail "POSTGRES_PASSWORD is not set: the database would be created without a password (set it from a Secret with secretKeyRef)"
    parent="$(dirname "$PGDATA")"
    [ -w "$parent" ] || fail "cannot write to $parent (uid $(id -u)): mount a volume there that this user may write (fsGroup)"

    # Initialise next to the final place and rename at the end, so a start interrupted half-way is redone
    # from scratch instead of leaving a cluster without its database.
    staging="$PGDATA.init"
    rm -rf "$staging"
    echo "postgres-entrypoint: creating the database cluster in $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
    # The password reaches initdb through a pipe: it is never written to a file.
    printf '%s\n' "$password" | initdb --pgdata="$staging" --username="$POSTGRES_USER" --pwfile=/dev/stdin \
        --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    cat >"$staging/pg_hba.conf" <<'EOF'
# TYPE  DATABASE  USER  ADDRESS  METHOD
local   all       all            scram-sha-256
host    all       all   all      scram-sha-256
EOF
    if [ "$POSTGRES_DB" != postgres ]; then
        # Single-user mode: no socket is opened, so nothing can connect before the database exists.
        printf 'CREATE DATABASE "%s" OWNER "%s";\n' "$POSTGRES_DB" "$POSTGRES_USER" |
            postgres --single -j -c exit_on_error=on -D "$staging" postgres >/dev/null
    fi
    mv "$staging" "$PGDATA"
fi

# The server does not need the password in its environment.
unset POSTGRES_PASSWORD
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
