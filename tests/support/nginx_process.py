"""A real nginx in front of the gateway, configured the way nginx-proxy configures a virtual host.

The http-level part reproduces what nginx-proxy's template renders with
`TRUST_DOWNSTREAM_PROXY=false` (nginx-proxy 1.11, `nginx.tmpl`): HTTP/1.1 to a keep-alive
upstream, the `Connection` and `X-Forwarded-*` maps, `X-Real-IP $remote_addr`,
`X-Forwarded-For $remote_addr`, and `Proxy ""`. The server and location levels include OUR
files from deploy/vhost.d exactly where nginx-proxy includes them, so the tests exercise the
snippets that ship. A test may swap in a modified copy of the location file (nginx refuses a
directive given twice, so a shortened timeout must replace the shipped one, not follow it).

nginx runs in the foreground (`daemon off`) in a session of its own; on the way out the master
gets SIGTERM and a bounded wait, then the whole process group gets SIGKILL, so no worker
outlives a test. Everything it writes (pid, logs, temporary files) stays under one directory.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from tests.support.deploy_files import VHOST_DIR
from tests.support.waits import WAIT

NGINX: Final = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
HOST: Final = "mcp.example.com"
SERVER_SNIPPET: Final = VHOST_DIR / HOST
LOCATION_SNIPPET: Final = VHOST_DIR / f"{HOST}_location"
# Seconds between connection attempts while nginx starts.
START_POLL: Final = 0.02

_CONFIG = """\
{user}
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log info;
events {{ worker_connections 256; }}

http {{
    access_log {run}/access.log;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;

    # --- as nginx-proxy renders it, TRUST_DOWNSTREAM_PROXY=false ---
    map $proxy_add_x_forwarded_for $proxy_x_forwarded_for {{
        default $remote_addr;
        '' $remote_addr;
    }}
    map $http_x_forwarded_proto $proxy_x_forwarded_proto {{
        default $scheme;
        '' $scheme;
    }}
    map $http_x_forwarded_host $proxy_x_forwarded_host {{
        default $host;
        '' $host;
    }}
    map $http_x_forwarded_port $_proxy_x_forwarded_port {{
        default $server_port;
    }}
    map $_proxy_x_forwarded_port $proxy_x_forwarded_port {{
        default $_proxy_x_forwarded_port;
        '' $server_port;
    }}
    map $server_port $host_port {{
        default :$server_port;
        80 '';
        443 '';
    }}
    map $http_upgrade $proxy_connection {{
        default upgrade;
        '' $proxy_connection_noupgrade;
    }}
    map $upstream_keepalive $proxy_connection_noupgrade {{
        default close;
        true '';
    }}
    map "" $upstream_keepalive {{
        default false;
    }}
    map $proxy_x_forwarded_proto $proxy_x_forwarded_ssl {{
        default off;
        https on;
    }}

    proxy_http_version 1.1;
    proxy_set_header Host $host$host_port;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $proxy_connection;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_x_forwarded_for;
    proxy_set_header X-Forwarded-Host $proxy_x_forwarded_host;
    proxy_set_header X-Forwarded-Proto $proxy_x_forwarded_proto;
    proxy_set_header X-Forwarded-Ssl $proxy_x_forwarded_ssl;
    proxy_set_header X-Forwarded-Port $proxy_x_forwarded_port;
    proxy_set_header X-Original-URI $request_uri;
    proxy_set_header Proxy "";

    upstream {host} {{
        server 127.0.0.1:{upstream_port};
        keepalive 2;
    }}

    server {{
        server_name {host};
        listen 127.0.0.1:{port};
{server_extra}
        include {server_snippet};

        location / {{
            proxy_pass http://{host};
            set $upstream_keepalive true;
            include {location_snippet};
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _user_directive() -> str:
    """As root, workers would run as `nobody` and could not use the temporary paths under the
    test's private directory: keep them as this user. Not root, nginx cannot switch at all."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


class NginxServer:
    """One nginx, proxying http://127.0.0.1:<port>/ to the gateway on `upstream_port`."""

    def __init__(
        self,
        workdir: Path,
        upstream_port: int,
        location_snippet: Path = LOCATION_SNIPPET,
        server_extra: str = "",
    ) -> None:
        assert NGINX is not None
        self.run = workdir / "nginx"
        self.run.mkdir()
        self.port = free_port()
        self.config = self.run / "nginx.conf"
        self.config.write_text(
            _CONFIG.format(
                user=_user_directive(),
                run=self.run,
                host=HOST,
                upstream_port=upstream_port,
                port=self.port,
                server_extra=server_extra,
                server_snippet=SERVER_SNIPPET,
                location_snippet=location_snippet,
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def error_log(self) -> str:
        path = self.run / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        assert NGINX is not None
        argv = [NGINX, "-p", str(self.run), "-c", str(self.config), "-e", str(self.run / "error.log")]
        self.process = subprocess.Popen(
            [*argv, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the workers die with it in stop()
        )
        deadline = time.monotonic() + WAIT
        while not self._accepts():
            assert self.process.poll() is None, f"nginx exited:\n{self.error_log}"
            assert time.monotonic() < deadline, f"nginx did not start:\n{self.error_log}"
            time.sleep(START_POLL)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)  # fast shutdown: workers close their connections
        try:
            process.wait(timeout=WAIT)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # any worker left behind
            if process.poll() is None:
                process.wait(timeout=WAIT)


def location_copy(workdir: Path, **replacements: str) -> Path:
    """A copy of the shipped location snippet with some directives' values replaced."""
    text = LOCATION_SNIPPET.read_text()
    for directive, value in replacements.items():
        lines = text.splitlines()
        found = [i for i, line in enumerate(lines) if line.split()[:1] == [directive]]
        assert len(found) == 1, f"{LOCATION_SNIPPET.name} sets {directive} {len(found)} times"
        lines[found[0]] = f"{directive} {value};"
        text = "\n".join(lines) + "\n"
    path = workdir / f"{HOST}_location"
    path.write_text(text)
    return path


@contextlib.contextmanager
def running_nginx(
    workdir: Path, upstream_port: int, location_snippet: Path = LOCATION_SNIPPET, server_extra: str = ""
) -> Iterator[NginxServer]:
    server = NginxServer(workdir, upstream_port, location_snippet, server_extra)
    try:
        server.start()
        yield server
    finally:
        server.stop()
