"""The per-service folder `mcp-gateway new-service` renders (see gateway/scaffold.py): `*.tmpl` files."""
