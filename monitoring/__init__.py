"""Monitoring as code: one configuration for the dashboards, the recording and
alerting rules and their docs (``monitoring.config``), and one command that
regenerates every artefact from it (``python -m monitoring.generate``)."""
