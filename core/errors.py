"""User-facing errors: one line that says what is wrong and where.

Every package raises subclasses of `QsensError` for bad input; the CLI prints
`error: <message>` and exits 2 instead of showing a traceback.
"""


class QsensError(Exception):
    """Bad input from the user (file, option, layer name, budget...)."""


class ConfigError(QsensError):
    """A QuantConfig that does not fit the model or the option set."""


class BankMismatchError(QsensError):
    """A bank used with a model other than the one it was built from."""


class BankFormatError(QsensError):
    """A bank directory that is missing files or is corrupt."""
