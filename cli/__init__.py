"""The `p2pnet` command line (installed as the package ``p2pnet_cli``)."""
