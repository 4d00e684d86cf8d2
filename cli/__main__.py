"""`python -m p2pnet_cli` runs the `p2pnet` command."""

from p2pnet_cli.main import main

main()
