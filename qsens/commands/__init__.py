"""One module per `qsens` subcommand (`register(subparsers)` + `run(args)`), imported by `qsens.cli`."""
