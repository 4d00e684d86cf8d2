"""Local swarms and testnet files (installed as the package ``p2pnet_testnet``)."""
