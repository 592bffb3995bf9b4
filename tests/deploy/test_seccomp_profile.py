"""deploy/seccomp-namespaces.json, loaded into real processes with libseccomp.

The profile is what lets bubblewrap create namespaces inside a container (Docker's default one
refuses it), so the checks run bubblewrap itself under it, with the gateway's own command line,
as the gateway's user and as a child's; and the calls it exists to refuse are made under it and
must fail with EPERM, where the same call without it does not. A profile that refuses what
bubblewrap needs is shown to fail the same run, and every name in it must be one libseccomp
knows (Docker skips unknown names without a word).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest

from gateway.config.child import DEFAULT_CHILD_UIDS
from gateway.sessions.bubblewrap import find_bwrap, namespace_wrapper
from gateway.sessions.sandbox import IsolationRequest
from tests.deploy import seccomp_runner
from tests.support.deploy_files import DEPLOY
from tests.support.waits import WAIT

PROFILE: Final = DEPLOY / "seccomp-namespaces.json"
RUNNER: Final = Path(seccomp_runner.__file__)
FIRST_CHILD_UID, LAST_CHILD_UID = (int(part) for part in DEFAULT_CHILD_UIDS.split("-"))
# What bubblewrap calls to build a child's namespaces (strace of bwrap 0.8 with the gateway's
# command line): none of it may be refused.
BWRAP_NEEDS: Final = ("clone", "clone3", "unshare", "mount", "umount2", "pivot_root", "capset", "prctl", "setuid")
# Calls the profile refuses, with arguments that make each harmless and, without the filter,
# fail for another reason than EPERM (or succeed): the errno alone tells the filter acted.
O_CLOEXEC: Final = 0o2000000
DENIED_CALLS: Final = {
    "keyctl": [0, -2, 0],  # KEYCTL_GET_KEYRING_ID of the process keyring, not created
    "userfaultfd": [O_CLOEXEC],
    "bpf": [0, 0, 0],  # BPF_MAP_CREATE with no attributes
    "ptrace": [12, 1, 0, 0],  # PTRACE_GETREGS of PID 1, which this process does not trace
    "fsopen": [0, 0],  # no file system name
    "io_uring_setup": [0, 0],  # no entries, no parameters
    "open_by_handle_at": [-1, 0, 0],  # no mount, no handle
}

# Every system-call ABI of x86_64 and arm64 hosts (libseccomp's names, as Docker spells them).
TARGET_ABIS: Final = ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM")

pytestmark = pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap (bwrap) is not installed")


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(PROFILE.read_text())
    return value


def denied(profile: dict[str, Any]) -> set[str]:
    return {name for rule in profile["syscalls"] if rule["action"] != "SCMP_ACT_ALLOW" for name in rule["names"]}


def run(profile: Path | str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUNNER), str(profile), *argv],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        env={"PATH": os.defpath},
    )


def bwrap_true() -> list[str]:
    """The gateway's own bubblewrap command line for a child, running `true`."""
    bwrap = find_bwrap()
    assert bwrap is not None
    request = IsolationRequest("namespaces", None, (FIRST_CHILD_UID, LAST_CHILD_UID))
    return [*namespace_wrapper(bwrap, request, "/"), "/bin/sh", "-c", "true"]


def test_the_profile_allows_by_default_and_refuses_with_eperm(profile: dict[str, Any]) -> None:
    assert set(profile) == {"defaultAction", "architectures", "syscalls"}
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    for rule in profile["syscalls"]:
        assert set(rule) == {"comment", "names", "action", "errnoRet"}, rule["names"]
        assert (rule["action"], rule["errnoRet"]) == ("SCMP_ACT_ERRNO", errno.EPERM), rule["names"]
    names = [name for rule in profile["syscalls"] for name in rule["names"]]
    assert len(names) == len(set(names)), "a name in two rules"


def test_every_name_is_a_system_call_libseccomp_knows(profile: dict[str, Any]) -> None:
    lib = seccomp_runner.libseccomp()
    unknown = sorted(
        name
        for name in denied(profile)
        if lib.seccomp_syscall_resolve_name(name.encode()) == seccomp_runner.NR_SCMP_ERROR
    )
    assert unknown == []
    for name in profile["architectures"]:
        seccomp_runner.arch_token(lib, name)


def test_every_abi_of_the_hosts_it_targets_is_filtered(profile: dict[str, Any]) -> None:
    """Each ABI a process can call the kernel through on those hosts (32-bit x86 and x32 on
    x86_64, 32-bit ARM on arm64) gets the same rules; through one the profile does not name, a
    call would meet the runtime's bad-architecture action instead."""
    assert set(profile["architectures"]) == set(TARGET_ABIS)


def test_nothing_bubblewrap_needs_is_refused(profile: dict[str, Any]) -> None:
    assert denied(profile) & set(BWRAP_NEEDS) == set()


@pytest.mark.parametrize(
    "uid",
    [None, FIRST_CHILD_UID],
    ids=["as-the-gateway-s-user", "as-a-child-s-user"],
)
def test_bubblewrap_builds_a_child_s_namespaces_under_the_profile(uid: int | None) -> None:
    if uid is not None and os.geteuid() != 0:
        pytest.skip("switching to a child's user takes root")
    switch = [] if uid is None else ["--uid", str(uid)]
    result = run(PROFILE, *switch, "exec", *bwrap_true())
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("refused", ["mount", "pivot_root", "unshare"])
def test_a_profile_that_refuses_what_bubblewrap_needs_fails_the_same_run(
    profile: dict[str, Any], refused: str, tmp_path: Path
) -> None:
    """The check above can fail: with one call bubblewrap needs refused, the same command fails."""
    broken = json.loads(json.dumps(profile))
    broken["syscalls"][0]["names"].append(refused)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    result = run(path, "exec", *bwrap_true())
    assert result.returncode != 0
    assert "Operation not permitted" in result.stderr


@pytest.mark.parametrize("name", sorted(DENIED_CALLS))
def test_a_refused_call_fails_with_eperm_under_the_profile(profile: dict[str, Any], name: str) -> None:
    assert name in denied(profile)
    arguments = [str(value) for value in DENIED_CALLS[name]]
    control = run("-", "syscall", name, *arguments)
    assert control.returncode == 0, control.stderr
    if int(control.stdout) == errno.EPERM:
        pytest.skip(f"{name} is refused here even without the profile (a sysctl, or no privilege)")
    filtered = run(PROFILE, "syscall", name, *arguments)
    assert filtered.returncode == 0, filtered.stderr
    assert int(filtered.stdout) == errno.EPERM
