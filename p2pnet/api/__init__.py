"""The node's HTTP layer: a small HTTP/1.1 server (Trio + h11) with the local
control API and an OpenAI-compatible API.

Modules (nothing is re-exported here, so that importing `p2pnet.api.types` or
`p2pnet.api.client` does not pull in the server):

- types: ChatRequest, ChatResult, QueryService (what the coordinator implements)
- http: Request, Response, StreamingResponse, Router
- server: HttpServer
- openai: mount_openai; openai_schema: parsing and response shapes, no I/O
- sse: server-sent events, encoding and decoding
- dashboard: the web dashboard's routes, assets and token (p2pnet.dashboard gathers its data)
- client: synchronous JSON client for the CLI
- errors: ApiError and its subclasses
"""
