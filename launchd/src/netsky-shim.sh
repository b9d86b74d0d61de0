#!/bin/sh
# netsky-shim: what launchd and systemd run. It runs the live netsky binary,
# or the home's last known good copy (bin/netsky.lkg) when the live one is
# missing or broken. Written by `netsky launchd install` / `systemd install`.
#
#   netsky-shim LIVE HOME            run the daemon: exec BINARY --home HOME node run
#   netsky-shim LIVE HOME --which    print the binary it would run and why, then exit
#
# A fallback reaches the daemon in NETSKY_SHIM_FALLBACK (why) and
# NETSKY_SHIM_LIVE (the live binary); the daemon records and escalates it.
# When the last known good binary is broken too, the shim says so and exits
# 78 (EX_CONFIG) instead of looping; the supervisor tries again after its
# throttle, so a fixed binary is picked up without a person.
set -u

if [ $# -lt 2 ]; then
    echo "usage: netsky-shim LIVE HOME [--which]" >&2
    exit 64
fi
live=$1
home=$2
mode=${3:-run}
lkg="$home/bin/netsky.lkg"
# Seconds a probe may take: a binary that hangs on --version is broken.
probe_timeout=${NETSKY_SHIM_PROBE_TIMEOUT:-10}

# probe BIN: BIN is an executable file that answers --version with "netsky ..." in time.
probe() {
    [ -f "$1" ] && [ -x "$1" ] || return 1
    out=$(
        "$1" --version 2>/dev/null &
        pid=$!
        (sleep "$probe_timeout"; kill -9 "$pid") >/dev/null 2>&1 &
        killer=$!
        wait "$pid"
        rc=$?
        kill "$killer" 2>/dev/null
        exit "$rc"
    ) || return 1
    case "$out" in
        netsky\ *) return 0 ;;
        *) return 1 ;;
    esac
}

# why BIN: what is wrong with a binary that failed its probe.
why() {
    if [ ! -e "$1" ]; then
        echo "missing"
    elif [ ! -f "$1" ] || [ ! -x "$1" ]; then
        echo "not an executable file"
    else
        echo "broken (--version failed or timed out)"
    fi
}

reason=""
if probe "$live"; then
    bin=$live
else
    reason="the live binary $live is $(why "$live")"
    if probe "$lkg"; then
        bin=$lkg
    else
        echo "netsky-shim: $reason, and the last known good $lkg is $(why "$lkg"): nothing to run" >&2
        exit 78
    fi
fi

if [ "$mode" = "--which" ]; then
    printf '%s\n%s\n' "$bin" "$reason"
    exit 0
fi
if [ -n "$reason" ]; then
    echo "netsky-shim: $reason; running the last known good $lkg" >&2
    NETSKY_SHIM_FALLBACK=$reason
    NETSKY_SHIM_LIVE=$live
    export NETSKY_SHIM_FALLBACK NETSKY_SHIM_LIVE
fi
exec "$bin" --home "$home" node run
