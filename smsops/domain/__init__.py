"""The pure domain: pandas in, pandas out; no I/O, no Prefect."""
