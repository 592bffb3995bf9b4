"""HTTP transports: MCP's Streamable HTTP (legacy era) and the SSE writer it uses."""
