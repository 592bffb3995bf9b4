"""The per-service folder `mcp-gateway new-service` renders (see gateway/tools/new_service.py): `*.tmpl` files."""
