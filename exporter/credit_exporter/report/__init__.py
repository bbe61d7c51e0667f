"""``credit-exporter report``: credit reports and recommendations (docs/report.md)."""
