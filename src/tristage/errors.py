"""Errors that mean "the input is wrong", as opposed to bugs.

A stage that raises `UserError` exits non-zero with the message on one line (see
`tristage.stage.run_stage`); anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a params key, a manifest row, a missing upstream stage. The message
    names the file, row or key at fault and, where it helps, what to do about it."""


class ParamsError(UserError):
    """params.yaml (or a --set override) is invalid; the message names the key."""
