"""The version of mcp-gateway: a leaf every module may import."""

__version__ = "0.1.0"
