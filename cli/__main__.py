"""`python -m cli` is `pimesh`."""

from cli.app import main

main()
