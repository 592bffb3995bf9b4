"""The built-in OAuth 2.1 authorization server (optional, off unless `oauth_server` is set).

For services whose users hold API tokens checked by the `static` or `whoami` verifier, or an
account at the team's OpenID provider: the user signs in once in a browser by proving their
service token or with the provider, approves the client, and the client receives short-lived
access tokens for this gateway only. Modules, one job each: `storage` (records with expiry:
SQLite or Redis), `keyset` (ES256 signing keys and rotation), `clients` (dynamic registration
and client metadata documents), `tokens` (codes, tokens, refresh families, the verifier of this
server's tokens), `oidc` (the upstream OpenID provider as a sign-in method), `server` (the state
built from settings, and running it), `browser_state` (the browser's encrypted-cookie session as
typed records), `params` (request parameters), `refusals` (how every endpoint audits and answers
what it refuses), `browser` (authorize, sign-in, consent: the pages), `endpoints` (token,
revocation, registration: JSON for clients), `pages` (HTML), `routes` (the route table, the
pages' middlewares, the cleanup context).
"""
