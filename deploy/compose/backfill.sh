#!/bin/sh
# One-shot (Compose service "backfill", exporter image): write the demo database's
# history into Prometheus's data volume before Prometheus starts, with the job
# and instance labels of the live scrape so the live samples continue the same
# series. Older history at BACKFILL_STEP (default 1h), the last BACKFILL_RECENT_DAYS
# (default 1) at BACKFILL_RECENT_STEP (default 1m): 90 days at 1m would be ~125 GB of
# transient OpenMetrics (docs/backfill.md). BACKFILL_RECENT_STEP at most 5m: backfill-rules.sh
# evaluates the recording rules over the last day, and a coarser step leaves the
# 5-minute lookback empty at the evaluation times for some start times; the
# recording rules are backfilled over the recent tier only. Runs once
# per data volume (marker file, which also tells backfill-rules.sh the last day's
# range and step).
# deploy/native_stack.py runs this same script with the paths and the instance
# overridden by the environment variables below.
set -eu
out="${BACKFILL_OUTPUT:-/var/lib/credit-exporter/backfill}"
config="${CREDIT_EXPORTER_CONFIG:-/etc/credit-exporter/config.yaml}"
marker="$out/credit-exporter-backfill.done"
if [ -e "$marker" ]; then
  echo "history already backfilled: $(cat "$marker")"
  exit 0
fi
days="${BACKFILL_DAYS:-90}"
recent_step="${BACKFILL_RECENT_STEP:-1m}"
end=$(date +%s)
day_ago=$((end - ${BACKFILL_RECENT_DAYS:-1} * 86400))
start=$((end - days * 86400))
rfc3339() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }
backfill() {
  credit-exporter backfill --config "$config" --quiet \
    --output "$out" --label job=credit-exporter --label "instance=${BACKFILL_INSTANCE:-exporter:9187}" \
    --from "$(rfc3339 "$1")" --to "$(rfc3339 "$2")" --step "$3"
}
if [ "$start" -lt "$day_ago" ]; then
  backfill "$start" "$day_ago" "${BACKFILL_STEP:-1h}"
else
  day_ago=$start
fi
backfill "$day_ago" "$end" "$recent_step"
echo "$day_ago $end $recent_step" > "$marker"
