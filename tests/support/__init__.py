"""Helpers shared by the tests, one module per concern, imported by path
(`from tests.support.mcp import Mcp`). The conftest files only declare fixtures, built from these
helpers; no test imports a conftest.

    types            the aliases several test modules share (JsonObj, Gateway)
    waits            WAIT, the bound on any single wait, and `eventually`
    servers          where the stdio MCP servers of tests/servers/ live; the echo server's argv
    settings         Settings around the echo server; the Host header of its public URL
    mcp              the protocol-level MCP client over the aiohttp test client; SSE readers
    processes        /proc for leak checks; a gateway subprocess's JSON log
    gateway_process  `mcp-gateway serve` as a subprocess, and an MCP client over real HTTP
    connect_process  `mcp-gateway connect` as a subprocess, driven over stdin and stdout
    nginx_process    a real nginx in front of the gateway, configured as nginx-proxy does
    redis_process    a real redis-server on a free loopback port
    deploy_files     readers for deploy/: Compose and .env, Dockerfiles, .dockerignore, nginx
    oauth            the authorization server's client side: settings, a browser, PKCE
    oidc_provider    a fake OpenID provider served by aiohttp_server
    sdk_scenarios    transport-independent scenarios driven by the official SDK client
"""
