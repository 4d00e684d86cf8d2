"""p2pnet: a peer-to-peer network of expert LLMs ("LLM-Net")."""

__version__ = "0.1.0"
