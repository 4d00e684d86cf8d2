"""The node's web dashboard: what it shows and where each number comes from.

- recent: the bounded list of queries this node's API answered (summaries
  of their provenance; never a prompt or an answer)
- views: pure JSON views of the node, its peers and the announced experts
- history: the ledger read for the page (last blocks, validators' last
  votes, ``verify``, and each expert's standing over height by replaying the
  committed blocks with the real reputation code)
- service: the node service that gathers them; the HTTP side (routes,
  static files, the API-key cookie) is p2pnet.api.dashboard
- static/: the page, its script and style, served by the node (no CDN)
"""
