"""Helpers the Prefect flow (`flows/pipeline.py`) calls: GPU slots, DVC commands, run workspaces.

Nothing here knows the stages' logic: the flow runs the DVC DAG by calling `dvc`.
"""
