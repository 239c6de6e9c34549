"""Grafana dashboards as code: ``python -m monitoring.dashboards.build`` writes the JSON here."""
