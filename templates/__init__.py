"""Templates rendered by mcp-gateway; shipped in the package as `gateway.templates` (data only)."""
