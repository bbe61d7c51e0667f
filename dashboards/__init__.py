"""Grafana dashboards as code for credit-exporter.

One module per dashboard (``usage``, ``org_analytics``, ``agent_analytics``,
``models_users``, ``budgets``, ``exporter_health``), shared helpers in
``common``, the seed checklist in ``checklist``. ``python -m dashboards.build``
writes the JSON Grafana provisions from ``dashboards/generated/``.
"""
