#!/usr/bin/env bash
# Install the egov-netmon agent (or, with --collector, the collector) as a hardened systemd service on a
# Debian/Ubuntu machine: the `netmon` system user, the config and state directories, the package in
# /opt/netmon/venv, the unit, a config check as that user, then enable and (re)start. Safe to run again:
# it upgrades the package and the unit and keeps an existing config. See docs/operations.md.
set -euo pipefail
umask 022  # the venv must be readable by the netmon user whatever the admin's umask; secrets get explicit modes

usage() {
  cat <<'EOF'
usage: deploy/install.sh [--collector] [--from DIR|WHEEL] [--raw-icmp] [--no-start] [--dry-run] [--root DIR]

  --collector     install netmon-collector instead of netmon-agent
  --from SOURCE   the checkout directory or a built wheel to install (default: this script's checkout)
  --raw-icmp      agent: grant CAP_NET_RAW (drop-in raw-icmp.conf) instead of widening net.ipv4.ping_group_range
  --no-start      enable the unit but do not (re)start it
  --dry-run       print every command that would change the machine, change nothing
  --root DIR      install under DIR instead of / (staging and tests): users go into DIR/etc/passwd
                  (which must exist), sysctl and systemctl are not touched, the venv's scripts point into DIR
  --python PY     the Python (3.11 or newer) that creates the venv (default: python3)
EOF
}

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
CHECKOUT=$(dirname "$SCRIPT_DIR")
SERVICE_USER=netmon
PREFIX=/opt/netmon
VENV=$PREFIX/venv
PING_SYSCTL_FILE=/etc/sysctl.d/60-netmon-ping-group.conf
RAW_ICMP_DROPIN=netmon-agent.service.d/raw-icmp.conf

role=agent source=$CHECKOUT raw_icmp=0 start=1 dry_run=0 root="" python=python3

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: %s\n' "$*" >&2; exit 1; }

# Every command that changes the machine goes through run, so --dry-run shows exactly them.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [ "$dry_run" = 0 ]; then "$@"; fi
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --collector) role=collector ;;
      --from) source=${2:?--from needs a directory or a wheel}; shift ;;
      --raw-icmp) raw_icmp=1 ;;
      --no-start) start=0 ;;
      --dry-run) dry_run=1 ;;
      --root) root=$(cd "${2:?--root needs a directory}" && pwd); shift ;;
      --python) python=${2:?--python needs an interpreter}; shift ;;
      -h|--help) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
    shift
  done
  if [ "$role" = collector ] && [ "$raw_icmp" = 1 ]; then die "--raw-icmp is for the agent only"; fi
}

set_role() {
  if [ "$role" = agent ]; then
    command=netmon-agent config_dir=/etc/netmon config_file=agent.yml env_file=agent.env
    example=$CHECKOUT/config/agent.example.yml state_dir=/var/lib/netmon-agent
  else
    command=netmon-collector config_dir=/etc/netmon-collector config_file=collector.yml env_file=collector.env
    example=$CHECKOUT/config/collector.example.yml state_dir=/var/lib/netmon-collector
  fi
  unit=$command.service
}

check_machine() {
  if [ -z "$root" ] && [ "$dry_run" = 0 ] && [ "$(id -u)" -ne 0 ]; then die "run as root (or try --dry-run)"; fi
  if [ -n "$root" ] && [ ! -f "$root/etc/passwd" ]; then die "--root $root: $root/etc/passwd and group must exist"; fi
  if ! "$python" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    die "$python is not Python 3.11+ with venv: apt-get install python3 python3-venv (or pass --python)"
  fi
  if [ ! -e "$source" ]; then die "--from $source: no such file or directory"; fi
}

# The passwd/group entry field of NAME, from DIR/etc under --root, else from the system's databases.
lookup() {
  local database=$1 name=$2 field=$3
  if [ -n "$root" ]; then
    awk -F: -v name="$name" -v field="$field" '$1 == name { print $field; found = 1 } END { exit !found }' "$root/etc/$database"
  else
    getent "$database" "$name" | cut -d: -f"$field"
  fi
}

ensure_user() {
  if lookup passwd "$SERVICE_USER" 1 >/dev/null; then
    say "user $SERVICE_USER exists"
    return
  fi
  local prefix=()
  if [ -n "$root" ]; then prefix=(--prefix "$root"); fi
  run useradd "${prefix[@]}" --system --user-group --home-dir /nonexistent --no-create-home \
    --shell /usr/sbin/nologin --comment "egov-netmon services" "$SERVICE_USER"
}

resolve_ids() {
  # numeric, so chown works under --root where the system does not know the user; names on a dry run
  uid=$(lookup passwd "$SERVICE_USER" 3) || uid=$SERVICE_USER
  gid=$(lookup group "$SERVICE_USER" 3) || gid=$SERVICE_USER
}

install_directories() {
  run install -d -m 0755 "$root$PREFIX" "$root$PREFIX/docs" "$root/etc/systemd/system"
  run install -d -m 0750 -o 0 -g "$gid" "$root$config_dir"
  run install -d -m 0750 -o "$uid" -g "$gid" "$root$state_dir"
}

install_package() {
  if [ ! -x "$root$VENV/bin/python" ]; then
    run "$python" -m venv "$root$VENV"
  fi
  run "$root$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "$source"
  run install -m 0644 "$CHECKOUT/docs/operations.md" "$root$PREFIX/docs/operations.md"
}

install_config() {
  local config=$root$config_dir/$config_file env=$root$config_dir/$env_file
  if [ -e "$config" ]; then
    say "keeping $config_dir/$config_file"
  else
    run install -m 0640 -o 0 -g "$gid" "$example" "$config"
  fi
  if [ ! -e "$env" ]; then
    # secrets referenced as ${NAME} in the config, one NAME=value a line; readable by root and the service only
    run install -m 0640 -o 0 -g "$gid" /dev/null "$env"
  fi
}

install_unit() {
  run install -m 0644 "$SCRIPT_DIR/systemd/$unit" "$root/etc/systemd/system/$unit"
  if [ "$raw_icmp" = 1 ]; then
    run install -d -m 0755 "$root/etc/systemd/system/$unit.d"
    run install -m 0644 "$SCRIPT_DIR/systemd/$RAW_ICMP_DROPIN" "$root/etc/systemd/system/$RAW_ICMP_DROPIN"
  elif [ "$role" = agent ] && [ -e "$root/etc/systemd/system/$RAW_ICMP_DROPIN" ]; then
    say "keeping /etc/systemd/system/$RAW_ICMP_DROPIN (CAP_NET_RAW); remove it to run without"
  fi
}

# Datagram ICMP sockets are allowed to the groups in net.ipv4.ping_group_range ("1 0", the kernel's
# default, allows none). Widen the range just enough to hold the netmon group, never narrow it.
allow_datagram_icmp() {
  local low high
  case "$gid" in
    *[!0-9]*) say "would widen net.ipv4.ping_group_range to the group $SERVICE_USER, once created"; return ;;
  esac
  read -r low high </proc/sys/net/ipv4/ping_group_range
  if [ "$gid" -ge "$low" ] && [ "$gid" -le "$high" ]; then
    say "net.ipv4.ping_group_range ($low $high) already includes group $SERVICE_USER ($gid)"
    return
  fi
  if [ "$low" -gt "$high" ]; then
    low=$gid high=$gid
  else
    low=$((gid < low ? gid : low)) high=$((gid > high ? gid : high))
  fi
  if [ "$dry_run" = 1 ]; then
    say "would write $PING_SYSCTL_FILE: net.ipv4.ping_group_range = $low $high"
  else
    install -d -m 0755 "$root/etc/sysctl.d"
    printf '# datagram ICMP for the netmon-agent service (deploy/install.sh)\nnet.ipv4.ping_group_range = %s %s\n' \
      "$low" "$high" >"$root$PING_SYSCTL_FILE"
    say "wrote $root$PING_SYSCTL_FILE: net.ipv4.ping_group_range = $low $high"
  fi
  if [ -z "$root" ]; then run sysctl -q -p "$PING_SYSCTL_FILE"; fi
}

# KEY=value lines of the env file, exported without shell expansion (as systemd's EnvironmentFile= reads them).
export_env_file() {
  local file=$1 key value
  [ -r "$file" ] || return 0
  while IFS='=' read -r key value; do
    case "$key" in ''|'#'*|';'*) continue ;; esac
    case "$value" in \"*\"|\'*\') value=${value:1:${#value}-2} ;; esac
    export "$key=$value"
  done <"$file"
}

check_config() {
  local config=$root$config_dir/$config_file
  local argv=("$root$VENV/bin/$command" check-config "$config")
  if [ -z "$root" ]; then
    # as the service user, so a secret file it cannot read fails here and not at start
    argv=(setpriv --reuid "$SERVICE_USER" --regid "$SERVICE_USER" --init-groups "${argv[@]}")
  fi
  if [ "$dry_run" = 1 ]; then
    run "${argv[@]}"
    return
  fi
  printf '+'; printf ' %q' "${argv[@]}"; printf '\n'
  if ! (export_env_file "$root$config_dir/$env_file" && "${argv[@]}"); then
    die "the config is invalid: fix $config_dir/$config_file (and $config_dir/$env_file), then run this again"
  fi
}

start_service() {
  if [ -n "$root" ]; then
    say "installed under $root; not starting (--root)"
    return
  fi
  if [ ! -d /run/systemd/system ]; then
    say "systemd is not running here (PID 1 is $(cat /proc/1/comm)); start by hand:"
    say "  setpriv --reuid $SERVICE_USER --regid $SERVICE_USER --init-groups $VENV/bin/$command run --config $config_dir/$config_file"
    return
  fi
  run systemctl daemon-reload
  run systemctl enable "$unit"
  if [ "$start" = 0 ]; then return; fi
  run systemctl restart "$unit"
  if [ "$dry_run" = 0 ]; then
    systemctl is-active --quiet "$unit" || die "$unit did not stay up: journalctl -u $unit"
    say "$unit is running"
  fi
}

main() {
  parse_args "$@"
  set_role
  check_machine
  ensure_user
  resolve_ids
  install_directories
  install_package
  install_config
  install_unit
  if [ "$role" = agent ] && [ "$raw_icmp" = 0 ]; then allow_datagram_icmp; fi
  check_config
  start_service
}

main "$@"
