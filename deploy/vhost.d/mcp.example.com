# nginx-proxy includes this file inside the `server` block of one virtual host. Its name must be
# exactly that host's VIRTUAL_HOST: rename it (and mcp.example.com_location beside it) to your
# MCP_HOST, e.g. `mv mcp.example.com tools.acme.dev`. A host without a file of its own gets
# `default`, if there is one. The directory is mounted whole, so hosts can be added live.

# The largest request body nginx accepts, equal to the gateway's cap on one JSON-RPC message
# (MCP_GATEWAY_MAX_MESSAGE_BYTES in compose.yaml: 16 MiB = 16777216 bytes). nginx's own default
# is 1m, which would refuse large tool arguments before the gateway could judge them; anything
# larger than the gateway accepts is refused here with 413, without being streamed upstream.
client_max_body_size 16m;
