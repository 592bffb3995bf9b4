"""The two protocol eras and what passes between them: the 2026-07-28 envelope and its checks,
the era probe, and the translation between a modern client and a legacy server (and back).

Pure functions over decoded JSON-RPC: no I/O, nothing of the server's rooms. The gateway's
transport and the `connect` bridge use the same code, so both translate alike.
"""
