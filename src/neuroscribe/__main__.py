"""`python -m neuroscribe` is the `neuroscribe` command."""

from neuroscribe.cli.app import main

main()
