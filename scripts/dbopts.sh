# shellcheck shell=bash
# Helpers of scripts/backup and scripts/restore-backup: tshs connection
# options ("host=…;port=…;user=…;password=…;database=…") and the [tshs]
# group of a MySQL options file, turned into mysql client arguments.

fail() { echo "$(basename "$0"): $*" >&2; exit 1; }

# tshs_group FILE: the [tshs] group as "name=value;…".
tshs_group() {
    awk '/^[ \t]*\[/{g=($0 ~ /^[ \t]*\[tshs\]/)} g && /=/{sub(/^[ \t]+/,""); sub(/[ \t]+$/,""); printf "%s;", $0}' "$1"
}

# opt OPTIONS NAME: one option's value ("-" and "_" are the same).
opt() {
    local IFS=';' kv
    for kv in $1; do
        local k=${kv%%=*}
        k=${k//_/-}
        k=${k// /}
        [[ $k == "$2" ]] && { echo "${kv#*=}"; return; }
    done
}

server() { echo "$(opt "$1" host):$(opt "$1" port)"; }

# client_args OPTIONS: sets ARGS for mysqldump/mariadb (no password).
client_args() {
    ARGS=(--no-defaults)
    local v
    v=$(opt "$1" host) && [[ -n $v ]] && ARGS+=(--host="$v")
    v=$(opt "$1" port) && [[ -n $v ]] && ARGS+=(--port="$v")
    v=$(opt "$1" user) && [[ -n $v ]] && ARGS+=(--user="$v")
    v=$(opt "$1" socket) && [[ -n $v ]] && ARGS+=(--socket="$v")
    return 0
}

# admin_query OPTIONS SQL: tab-separated rows from the Admin Node.
admin_query() {
    client_args "$1"
    MYSQL_PWD=$(opt "$1" password) mariadb "${ARGS[@]}" -N -B -e "$2" "$(opt "$1" database)" ||
        fail "cannot query the Admin Node $(opt "$1" database) on $(server "$1")"
}
