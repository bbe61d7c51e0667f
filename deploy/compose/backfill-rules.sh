#!/bin/sh
# One-shot (Compose service "backfill-rules", Prometheus image): once Prometheus
# serves the backfilled series, evaluate the recording rules the dashboards read
# over the last backfilled day and move the blocks into its data directory (it
# loads them at its next block reload, within a minute). Only the last day:
# promtool evaluates each group at its own offset within the interval, where the
# 5m lookback misses the hourly samples of the older history (docs/deploy.md).
# deploy/native_stack.py runs this same script, paths and URL overridden.
set -eu
data="${PROMETHEUS_DATA:-/prometheus}"
rules="${RULE_FILES:-/etc/prometheus/rules/credit-exporter.rules.yml /etc/prometheus/rules/recording_rules.yml}"
marker="$data/credit-exporter-backfill.done"
done_rules="$data/credit-exporter-backfill-rules.done"
if [ -e "$done_rules" ]; then
  echo "recording rules already backfilled"
  exit 0
fi
read -r start end step < "$marker"
tmp="$data/rules-backfill.tmp"
rm -rf "$tmp"
# shellcheck disable=SC2086  # $rules: a list of paths without spaces
promtool tsdb create-blocks-from rules --quiet --url="${PROMETHEUS_URL:-http://prometheus:9090}" \
  --start="$start" --end="$end" --eval-interval="$step" --output-dir="$tmp" $rules
for block in "$tmp"/*; do
  [ -d "$block" ] && mv "$block" "$data/"
done
rm -rf "$tmp"
date -u +%Y-%m-%dT%H:%M:%SZ > "$done_rules"
