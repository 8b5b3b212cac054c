"""`python -m neurosql_med.cli`: the same entry point as the installed `nsql-med` command."""
from neurosql_med.cli.main import main

main()
