#!/bin/sh
# The baseline a user would otherwise write: a POSIX shell script with curl that whitelists
# this host's egress IP on a sendSMS API key and waits until the key lists it.
#
#   1. ask an IP echo service for this host's egress IP;
#   2. call token_add_ip through a path that is already authorized (a local address that is
#      already whitelisted, via curl --interface);
#   3. loop: token_list_ips; if it lists the IP, exit 0; else sleep and retry, up to a limit.
#
# Parameters (environment):
#   SENDSMS_API_URL        API endpoint, e.g. http://127.0.0.1:8089/json
#   SENDSMS_USERNAME       account user name
#   SENDSMS_API_KEY        the IP-locked API key (never printed; kept out of curl's argv)
#   ECHO_URL               IP echo service answering the caller's address as plain text
#   BOOTSTRAP_INTERFACE    local address (or interface) that is already whitelisted
#   MAX_TRIES              token_list_ips attempts before giving up (default 30)
#   RETRY_SLEEP            seconds between attempts (default 1)
#
# Exit: 0 listed, 1 not listed within MAX_TRIES, 2 bad parameters or a failed request.
# Used by bench/time-to-verified.sh as the side-by-side baseline.
set -eu

: "${SENDSMS_API_URL:?set SENDSMS_API_URL}"
: "${SENDSMS_USERNAME:?set SENDSMS_USERNAME}"
: "${SENDSMS_API_KEY:?set SENDSMS_API_KEY}"
: "${ECHO_URL:?set ECHO_URL}"
: "${BOOTSTRAP_INTERFACE:?set BOOTSTRAP_INTERFACE}"
max_tries=${MAX_TRIES:-30}
retry_sleep=${RETRY_SLEEP:-1}

# One API call: $1 is the action, the rest are extra curl arguments. The key goes to curl on
# standard input as a config line (printf is a shell builtin), so it is in no process's argv.
api() {
  action=$1
  shift
  case $SENDSMS_API_KEY in
    *[\\\"]*) escaped_key=$(printf '%s' "$SENDSMS_API_KEY" | sed 's/[\\"]/\\&/g') ;;
    *) escaped_key=$SENDSMS_API_KEY ;;
  esac
  printf 'data-urlencode = "password=%s"\n' "$escaped_key" |
    curl -fsS -G -K - \
      --data-urlencode "action=$action" \
      --data-urlencode "username=$SENDSMS_USERNAME" \
      "$@" "$SENDSMS_API_URL"
}

ip=$(curl -fsS "$ECHO_URL" | tr -d '[:space:]') || { echo "baseline: the echo service failed" >&2; exit 2; }
case $ip in
  '' | *[!0-9a-fA-F:.]*) echo "baseline: the echo service answered no IP address" >&2; exit 2 ;;
esac

# 0 = added, -512 = already listed: both leave the IP on the whitelist.
answer=$(api token_add_ip --data-urlencode "ipaddr=$ip" --interface "$BOOTSTRAP_INTERFACE") ||
  { echo "baseline: token_add_ip failed" >&2; exit 2; }
if ! printf '%s' "$answer" | grep -Eq '"status" *: *(0|-512) *[,}]'; then
  echo "baseline: token_add_ip refused: $(printf '%s' "$answer" | sed -n 's/.*"message" *: *"\([^"]*\)".*/\1/p')" >&2
  exit 2
fi

tries=0
while [ "$tries" -lt "$max_tries" ]; do
  tries=$((tries + 1))
  if answer=$(api token_list_ips) &&
    printf '%s' "$answer" | grep -Eq '"status" *: *0 *[,}]' &&
    printf '%s' "$answer" | grep -Fq "\"$ip\""; then
    echo "ok: $ip listed (token_list_ips attempt $tries)"
    exit 0
  fi
  [ "$tries" -lt "$max_tries" ] && sleep "$retry_sleep"
done
echo "baseline: $ip not listed after $max_tries attempts" >&2
exit 1
