"""The HTTP edge of the server: request context, client address, header checks, CORS, rate limits,
connection limits and health."""
