"""The `qsens` command: one module per subcommand in `qsens/commands/`, `cli.py` the error
boundary (docs/cli.md)."""
