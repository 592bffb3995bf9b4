"""The client side: `mcp-gateway connect`, a stdio MCP server that relays to a remote gateway.

It imports only the shared leaves of the package (`jsonrpc`, `framing`, `logline`,
`_version`), never the server."""
