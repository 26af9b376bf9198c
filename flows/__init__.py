"""Prefect flows that run the DVC DAG."""
