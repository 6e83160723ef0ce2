"""Prefect flows and the long-running scheduler (``smsops serve``)."""
