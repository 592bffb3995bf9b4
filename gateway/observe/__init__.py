"""Observability: the audit log, redaction, process logs and metrics."""
