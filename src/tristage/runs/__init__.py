"""Run bookkeeping: what a run logs, how runs compare, what a sweep runs and found, and the timings.

    tracking.py       the MLflow run of a stage (`Tracker`), the tracking URI, the runs view link
    compare.py        `tristage compare`: recent runs side by side (MLflow and `dvc exp show`)
    summary.py        `tristage summary`: the three stages' figures in one table, the band advice
    timings.py        timing fields moved out of the tracked metrics into timings/<stage>.json
    sweep_points.py   a sweep's points: grid, random ranges, names
    sweep_plan.py     a sweep's plan: points checked, stages split, slots, records, results
    sweep_results.py  each point's figures, the table, the recommended point, sweeps/<name>/
    sweep_charts.py   the two charts of a sweep

Library code: `flows/` reads the DAG from DVC and runs it; nothing here imports DVC or Prefect.
"""
