"""`python -m poisonbench ...`: the same command line as the `poisonbench` script."""

from .cli.main import main

main()
