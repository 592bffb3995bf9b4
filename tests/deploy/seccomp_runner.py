"""Run a program, or one system call, under a Docker seccomp profile, loaded the way Docker's
runtime (runc, crun) loads it (libseccomp, through ctypes): the default action, the native
architecture and every one the profile lists, every rule for each name libseccomp knows, then
`no_new_privs` and the filter. As in a container, the filter comes first and a change of user
(`--uid`) after it.

    python seccomp_runner.py PROFILE|-  [--uid UID] exec PROGRAM ARG...
    python seccomp_runner.py PROFILE|-  syscall NAME [INTEGER...]

`-` loads no filter (the control). `syscall` prints the call's errno (0 when it succeeded).
A standalone script: it imports nothing of the gateway, so what it loads is only the profile.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, Final

SCMP_ACT_ALLOW: Final = 0x7FFF0000
SCMP_ACT_ERRNO: Final = 0x00050000
NR_SCMP_ERROR: Final = -1  # seccomp_syscall_resolve_name: a name libseccomp does not know
EPERM: Final = 1


def libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    return lib


def arch_token(lib: ctypes.CDLL, docker_name: str) -> int:
    """libseccomp's token for a Docker architecture name (`SCMP_ARCH_X86_64` is `x86_64`)."""
    token = int(lib.seccomp_arch_resolve_name(docker_name.removeprefix("SCMP_ARCH_").lower().encode()))
    if token == 0:
        raise ValueError(f"libseccomp does not know the architecture {docker_name}")
    return token


def action_of(rule: dict[str, Any], key: str = "action") -> int:
    action = rule[key]
    if action == "SCMP_ACT_ALLOW":
        return SCMP_ACT_ALLOW
    if action == "SCMP_ACT_ERRNO":
        return SCMP_ACT_ERRNO | (int(rule.get("errnoRet", EPERM)) & 0xFFFF)
    raise ValueError(f"this loader knows SCMP_ACT_ALLOW and SCMP_ACT_ERRNO, not {action}")


def load(profile: dict[str, Any]) -> None:
    """Put the calling process (and all it starts) under `profile`, for good."""
    lib = libseccomp()
    ctx = lib.seccomp_init(action_of(profile, "defaultAction"))
    if not ctx:
        raise OSError("seccomp_init failed")
    for name in profile.get("architectures", []):
        if (code := lib.seccomp_arch_add(ctx, arch_token(lib, name))) not in (0, -errno.EEXIST):  # the native one
            raise OSError(-code, f"seccomp_arch_add {name}")
    for rule in profile["syscalls"]:
        for name in rule["names"]:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number == NR_SCMP_ERROR:
                continue  # as Docker does: a name this libseccomp does not know is skipped
            if (code := lib.seccomp_rule_add_array(ctx, action_of(rule), number, 0, None)) != 0:
                raise OSError(-code, f"seccomp_rule_add {name}")
    if (code := lib.seccomp_load(ctx)) != 0:
        raise OSError(-code, "seccomp_load")


def call(name: str, arguments: list[int]) -> int:
    """The errno of the system call `name` with `arguments` (0: it succeeded)."""
    number = libseccomp().seccomp_syscall_resolve_name(name.encode())
    if number < 0:
        raise ValueError(f"{name} is not a system call of this architecture")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(ctypes.c_long(number), *(ctypes.c_long(value) for value in arguments))
    return ctypes.get_errno() if result == -1 else 0


def main(argv: list[str]) -> int:
    profile, *rest = argv
    uid = None
    if rest[:1] == ["--uid"]:
        uid, rest = int(rest[1]), rest[2:]
    if profile != "-":
        load(json.loads(Path(profile).read_text()))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    verb, *words = rest
    if verb == "exec":
        os.execv(words[0], words)  # noqa: S606 - the program under test, from the test's own argv
    if verb == "syscall":
        print(call(words[0], [int(word, 0) for word in words[1:]]))
        return 0
    raise SystemExit(f"unknown verb {verb!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
