"""One module per `mtlsweep` sub-command; see orchestrator/cli.py."""
