"""The node's HTTP layer: a small HTTP/1.1 server (Trio + h11) with the local
control API and an OpenAI-compatible API.

Modules (nothing is re-exported here, so that importing `p2pnet.api.client`
does not pull in the server). The query vocabulary they speak (ChatRequest,
ChatResult, QueryService, the query errors) is `p2pnet.query`, which knows no
HTTP; `openai_schema` alone maps its errors to status codes.

- http: Request, Response, StreamingResponse, Router
- server: HttpServer
- openai: mount_openai; openai_schema: parsing, response shapes and the error-to-HTTP table, no I/O
- sse: server-sent events, encoding and decoding
- dashboard: the web dashboard's routes, assets and token (p2pnet.dashboard gathers its data)
- client: synchronous JSON client for the CLI
- errors: ApiError and its subclasses
"""
