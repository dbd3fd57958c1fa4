"""The error types moved to `core.errors` (the floor every package stands on); this module keeps
`from quant.errors import QsensError` working in users' scripts written before the move."""
from core.errors import BankFormatError, BankMismatchError, ConfigError, QsensError

__all__ = ["BankFormatError", "BankMismatchError", "ConfigError", "QsensError"]
