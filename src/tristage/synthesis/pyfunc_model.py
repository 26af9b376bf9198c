"""The code of the logged pyfunc model (MLflow "models from code", `pyfunc.log_synthesis_model`).

MLflow copies this file into the logged model and runs it, at logging and at loading, to get the
model object: the class comes from the installed `tristage`, nothing is pickled.
"""
from mlflow.models import set_model

from tristage.synthesis.pyfunc import TTSPyfunc

set_model(TTSPyfunc())
