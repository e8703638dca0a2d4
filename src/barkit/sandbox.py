"""Run untrusted, model-written Python in a contained subprocess.

Code answers of the micro-suite are checked by running them, and the code is written by a model
that is being trained with that very score as its reward, so it must never reach the host.
Containment comes in layers, each one enough against the usual accident, together meant to stop
deliberate misuse by small programs:

* operating-system limits set in the child before any user code runs: CPU seconds
  (``RLIMIT_CPU``), address space (``RLIMIT_AS``), file size (``RLIMIT_FSIZE``, which also caps
  what stdout and stderr can grow to, since they are files), process count (``RLIMIT_NPROC``),
  no core dumps, few open files;
* a wall-clock timeout after which the child's whole process group is killed;
* a fresh temporary working directory, removed afterwards, and an environment holding nothing
  from the host (``python -I -S -B``: isolated mode, no site-packages, no bytecode writes);
* a new network namespace (only a loopback that is down) wherever ``unshare -n`` works, probed
  once per process; where it does not (an unprivileged CI runner), the audit hook still refuses
  every socket operation;
* when the host runs as root and ``nobody`` can read the interpreter's standard library, the
  child drops to ``nobody``, so the kernel also refuses writes outside the working directory
  and enforces the process limit (it does not apply ``RLIMIT_NPROC`` to root). Where it cannot
  (an interpreter under ``/root``), the child stays root and the audit hook alone refuses
  forks and writes outside its folder;
* an audit hook (:func:`sys.addaudithook`, which code cannot remove) installed before the user's
  code runs. It refuses sockets, process and thread creation (``fork``, ``exec``, ``spawn``,
  ``system``, ``subprocess``, threads), signals to other processes, ``ctypes``, raising
  resource limits, and any open-for-writing, rename, delete or permission change outside the
  working directory.

The audit hook is a policy inside the interpreter, not a security boundary on its own (Python's
documentation says as much); the kernel-side layers above are what a determined program meets.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: Output kept from each stream; longer output is cut (the file-size limit bounds it anyway).
MAX_OUTPUT_CHARS = 64_000
WORKDIR_PREFIX = "barkit-sandbox-"

# The child's launcher. It runs with the host's trust until it installs the audit hook, then
# executes the user's file. It reads its settings from argv[1] (JSON) and deletes the user's
# file after reading it, so that the user's code cannot read what else the runner put there.
_LAUNCHER = r"""
import json, os, resource, sys
_cfg = json.loads(sys.argv[1])
for _name, _value in _cfg["limits"].items():
    # CPU: the hard limit one second above the soft one, so the kernel's SIGXCPU (a reason we
    # can name) arrives before its SIGKILL at the hard limit.
    _hard = _value + 1 if _name == "RLIMIT_CPU" else _value
    resource.setrlimit(getattr(resource, _name), (_value, _hard))
if _cfg["uid"] is not None:
    os.setgroups([])
    os.setgid(_cfg["gid"])
    os.setuid(_cfg["uid"])
import socket as _socket_module

class _NoSocket:
    def __init__(self, *args, **kwargs):
        raise PermissionError("sandbox: network access is not allowed")

def _no_network(*args, **kwargs):
    raise PermissionError("sandbox: network access is not allowed")

_socket_module.socket = _NoSocket
_socket_module.SocketType = _NoSocket
for _fn in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(_socket_module, _fn, _no_network)

def _install_guard(root):
    deny_events = frozenset((
        "subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn",
        "os.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit",
        "resource.prlimit", "os.symlink", "os.link", "os.chroot", "sys.remote_exec",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "os.startfile", "pty.spawn",
        "_thread.start_new_thread",
    ))
    deny_prefixes = ("socket.", "ctypes.", "_winapi.", "winreg.", "webbrowser.")
    deny_imports = frozenset(("_posixsubprocess", "_ctypes", "ctypes", "_winapi", "multiprocessing"))
    path_events = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1,
                   "os.truncate": 1, "os.utime": 1, "shutil.rmtree": 1, "os.rename": 2,
                   "os.listxattr": 0, "os.setxattr": 1, "os.removexattr": 1}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep

    def inside(path):
        if isinstance(path, int):
            return True  # an already open descriptor: only the sandbox's own ones exist
        try:
            full = realpath(fsdecode(path))
        except Exception:
            return False
        return full == root or full.startswith(root + sep)

    def guard(event, args):
        if event in deny_events or event.startswith(deny_prefixes):
            raise PermissionError("sandbox: " + event + " is not allowed")
        if event == "open":
            mode, flags = args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags)
            if writing and not inside(args[0]):
                raise PermissionError("sandbox: writing outside the working directory is not allowed")
        elif event == "import" and args[0].split(".")[0] in deny_imports:
            raise PermissionError("sandbox: importing " + args[0] + " is not allowed")
        elif event in path_events:
            for path in args[: path_events[event]]:
                if not inside(path):
                    raise PermissionError("sandbox: changing files outside the working directory is not allowed")

    sys.addaudithook(guard)

with open(_cfg["file"], encoding="utf-8") as _f:
    _source = _f.read()
os.remove(_cfg["file"])
_code = compile(_source, "<sandbox>", "exec")
_install_guard(os.path.realpath(_cfg["root"]))
del _cfg, _f, _source, _name, _value, _fn, _install_guard, _NoSocket, _no_network
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run did. ``ok`` means it exited with status 0 before any limit hit."""

    ok: bool
    stdout: str
    stderr: str
    returncode: int
    timed_out: bool
    #: Empty when ok; otherwise one line: the limit that stopped it or the error it ended with.
    reason: str
    #: Wall-clock seconds of the run, interpreter start included.
    seconds: float


@functools.lru_cache(maxsize=1)
def network_namespace_prefix() -> tuple[str, ...]:
    """The command prefix that runs a program without network, or ``()`` where none works.

    Root can create a network namespace directly; another user needs a user namespace as well
    (``unshare -r``), which some kernels and container runtimes forbid. Probed once per process.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    prefix = (unshare, "-n") if os.geteuid() == 0 else (unshare, "-r", "-n")
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    return prefix if probe.returncode == 0 else ()


@functools.lru_cache(maxsize=1)
def unprivileged_ids() -> tuple[int, int] | None:
    """(uid, gid) of ``nobody`` when the host runs as root and that user can run Python.

    Dropping root lets the kernel enforce the process limit and file permissions too. It is
    skipped where ``nobody`` cannot read the interpreter's standard library (an interpreter
    under ``/root``, say): imports would then fail after the switch. Probed once per process.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    ids = (entry.pw_uid, entry.pw_gid)
    probe = (
        f"import os; os.setgroups([]); os.setgid({ids[1]}); os.setuid({ids[0]}); "
        "import json, socket, collections, re, math, random, itertools"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-B", "-c", probe], capture_output=True, timeout=20, cwd="/"
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return ids if done.returncode == 0 else None


def _limits(cpu_s: int, memory_mb: int, file_mb: int) -> dict[str, int]:
    return {
        "RLIMIT_CPU": cpu_s,
        "RLIMIT_AS": memory_mb * 1024 * 1024,
        "RLIMIT_FSIZE": file_mb * 1024 * 1024,
        # 0: any fork or thread creation fails, whatever else runs under the same user
        "RLIMIT_NPROC": 0,
        "RLIMIT_CORE": 0,
        "RLIMIT_NOFILE": 64,
    }


def _remove_tree(path: Path) -> None:
    """Remove a folder the child may have left unreadable (chmod 000 folders included)."""

    def retry(func: object, target: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
            os.chmod(target, stat.S_IRWXU)
        with contextlib.suppress(OSError):
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                os.remove(target)

    shutil.rmtree(path, onerror=retry)


def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in the child's group (the leader included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read_output(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_OUTPUT_CHARS * 4)
    return data.decode("utf-8", errors="replace")[:MAX_OUTPUT_CHARS]


def _reason(returncode: int, timed_out: bool, timeout_s: float, stderr: str) -> str:
    """One line saying why a run is not ok ("" when it is)."""
    if timed_out:
        return f"wall-clock timeout after {timeout_s:g} s"
    if returncode < 0:
        sig = -returncode
        named: dict[int, str] = {
            signal.SIGXCPU: "CPU time limit exceeded",
            signal.SIGXFSZ: "file size limit exceeded",
            signal.SIGKILL: "killed (SIGKILL)",
        }
        return named.get(sig, f"killed by signal {signal.Signals(sig).name}")
    if returncode > 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"exit status {returncode}"
    return ""


def _prepare_dirs(code: str, owner: tuple[int, int] | None) -> tuple[Path, Path, Path]:
    """A private outer folder (output files) holding the child's own working folder."""
    outer = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    work = outer / "work"
    work.mkdir()
    code_file = work / "main.py"
    code_file.write_text(code, encoding="utf-8")
    if owner is not None:
        # the unprivileged child must reach and own its working folder, and nothing beside it
        os.chmod(outer, 0o711)
        for path in (work, code_file):
            os.chown(path, *owner)
    return outer, work, code_file


def run_python(
    code: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 256,
    cpu_s: int | None = None,
    file_mb: int = 4,
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox and report what happened.

    ``timeout_s`` is wall-clock time for the whole run, interpreter start included; ``cpu_s``
    (default: ``timeout_s`` rounded up) bounds CPU seconds; ``memory_mb`` the address space;
    ``file_mb`` any file the program writes, its stdout and stderr included. Never raises for
    anything the code does; raises ``OSError`` only if the host cannot start a process at all.
    """
    owner = unprivileged_ids()
    outer, work, code_file = _prepare_dirs(code, owner)
    config = {
        "limits": _limits(cpu_s or max(1, math.ceil(timeout_s)), memory_mb, file_mb),
        "uid": owner[0] if owner else None,
        "gid": owner[1] if owner else None,
        "file": str(code_file),
        "root": str(work),
    }
    argv = [*network_namespace_prefix(), sys.executable, "-I", "-S", "-B", "-X", "utf8"]
    argv += ["-c", _LAUNCHER, json.dumps(config)]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
    try:
        return _run(argv, env, work, outer, timeout_s)
    finally:
        _remove_tree(outer)


def _run(argv: list[str], env: dict[str, str], work: Path, outer: Path, timeout_s: float) -> SandboxResult:
    start = time.monotonic()
    with open(outer / "stdout", "wb") as out, open(outer / "stderr", "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=work,
            env=env,
            start_new_session=True,  # the child leads its own group: one killpg reaches all
            close_fds=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        # also sweeps anything the program left behind, should a fork ever get through
        _kill_group(proc.pid)
        proc.wait()
    seconds = time.monotonic() - start
    stdout, stderr = _read_output(outer / "stdout"), _read_output(outer / "stderr")
    returncode = proc.returncode
    ok = returncode == 0 and not timed_out
    reason = _reason(returncode, timed_out, timeout_s, stderr)
    return SandboxResult(ok, stdout, stderr, returncode, timed_out, reason, seconds)
