"""Moved to `tristage.runs.tracking`. This name stays only while `src/tristage/finetune/` imports it;
delete it when that package imports `tristage.runs.tracking`."""
from tristage.runs.tracking import ROLE_TAG, ensure_experiment, flatten, tracking_uri

__all__ = ["ROLE_TAG", "ensure_experiment", "flatten", "tracking_uri"]
