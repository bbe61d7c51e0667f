#!/bin/sh
# One-shot (Compose service "backfill"): write the demo database's history into
# Prometheus's data volume before Prometheus starts, with the job and instance
# labels of the live scrape so the live samples continue the same series.
# Older history at BACKFILL_STEP (default 1h), the last day at
# BACKFILL_RECENT_STEP (default 1m): 90 days at 1m would be ~125 GB of transient
# OpenMetrics (docs/backfill.md). Runs once per data volume (marker file).
set -eu
out=/var/lib/credit-exporter/backfill
marker="$out/credit-exporter-backfill.done"
if [ -e "$marker" ]; then
  echo "history already backfilled: $(cat "$marker")"
  exit 0
fi
days="${BACKFILL_DAYS:-90}"
backfill() {
  credit-exporter backfill --config /etc/credit-exporter/config.yaml --quiet \
    --output "$out" --label job=credit-exporter --label instance=exporter:9187 "$@"
}
if [ "$days" -gt 1 ]; then
  backfill --from "now-${days}d" --to now-1d --step "${BACKFILL_STEP:-1h}"
fi
backfill --from now-1d --to now --step "${BACKFILL_RECENT_STEP:-1m}"
echo "$days days, done $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$marker"
