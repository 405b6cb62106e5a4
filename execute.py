"""
Run model-written Python programs against their tests: one fresh interpreter per program, in a
fresh temporary directory (its working directory and HOME), under limits, and nothing of it left
when the call returns. This is a guard against accidents and runaway programs (infinite loops,
fork bombs, huge allocations, files or output, sys.exit before the tests), NOT a security boundary:
a program written to attack this harness can escape it. Run RL on code in a throwaway container or VM.

    from execute import run, run_batch
    r = run("def f(x):\\n    return x + 1\\n", "assert f(1) == 2")           # r.passed, r.status
    results = run_batch([(program, tests), ...])                          # parallel over the CPU cores
    python execute.py                  # what this machine contains (bench/bench_execute.py: executions per second)

What each run gets:
- limits (setrlimit in the child): CPU time, address space, file size, processes, no core files;
  wall time and output size enforced by the parent, which kills the whole process group;
- where the machine allows it (`unshare`: root, or unprivileged user namespaces): a new network
  namespace (no network, not even the host's loopback) and a new PID namespace (everything the
  program starts dies with it, even processes that leave the process group);
- when run as root: the program runs as `nobody` (it cannot write root's files, kill root's
  processes, and the process limit applies), keeping only the right to read files where the
  interpreter itself lives in a directory `nobody` cannot read (containment() says which);
- a clean environment (no inherited variables: tokens and keys stay out), `python -I -S`.
A pass is proved, not assumed: after the program and the tests ran, the harness reports "done",
the parent then sends a random nonce, and only an echo of that nonce counts. A program that exits
early (sys.exit, os._exit), kills itself or its parent, or hangs, never produces it; builtins,
trace and profile hooks the program changed are restored before the tests run.
"""
import argparse
import functools
import json
import os
import pwd
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass


@dataclass
class Limits:
    wall_s: float = 4.0      # JustGRPO allows 3 s per program and waits 1 s more for the process (timeout + 1)
    cpu_s: int = 3           # RLIMIT_CPU, per process
    memory_mb: int = 1024    # RLIMIT_AS: address space of each process
    file_mb: int = 16        # RLIMIT_FSIZE: largest file the program may write
    procs: int = 512         # RLIMIT_NPROC; Linux counts it over the whole user (see containment())
    output_kb: int = 1024    # stdout + stderr beyond this and the program is killed


@dataclass
class Result:
    passed: bool
    status: str              # passed | failed | timeout | output limit
    output: str              # the last 2000 characters of stdout + stderr (tracebacks)
    seconds: float


# The child: limits, then (as root) the user nobody, then the program, then the tests in its
# namespace. What the harness needs afterwards is bound to locals first, so a program that
# patches os or sys cannot reach it.
HARNESS = r"""
import os, resource, sys
report, nonce_in, drop, cpu, mem, fsize, nproc = map(int, sys.argv[1:8])
for limit, v in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, fsize),
                 (resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (v, v))
if drop:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries cannot give root back
    libc.prctl(8, 1, 0, 0, 0)   # PR_SET_KEEPCAPS: keep the permitted capabilities across setuid
    os.setgroups([]); os.setgid(drop); os.setuid(drop)
    keep = 4 if os.environ.pop("EXECUTE_KEEP_READ", "") else 0  # bit 2: CAP_DAC_READ_SEARCH
    if libc.capset((ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)(keep, keep, 0, 0, 0, 0)):
        os._exit(3)
write, read, exit, settrace, setprofile = os.write, os.read, os._exit, sys.settrace, sys.setprofile
import builtins
saved = dict(builtins.__dict__)
try:
    with open("program.py", encoding="utf-8") as f:
        program = compile(f.read(), "program.py", "exec")
    with open("tests.py", encoding="utf-8") as f:
        tests = compile(f.read(), "tests.py", "exec")
    scope = {"__name__": "__main__", "__builtins__": builtins}
    exec(program, scope)
    settrace(None); setprofile(None)
    builtins.__dict__.clear(); builtins.__dict__.update(saved)
    exec(tests, scope)
except BaseException:
    import traceback
    traceback.print_exc()
    exit(1)
write(report, b"done\n")
nonce = read(nonce_in, 64)
write(report, nonce)
exit(0)
"""

# -----------------------------------------------------------------------------
# what this machine allows


def _namespaces():
    """The `unshare` prefix for a new network and PID namespace (a user namespace when not root),
    or [] where the machine does not allow it (no unshare, a container without the privilege)."""
    exe = shutil.which("unshare")
    if exe is None:
        return []
    cmd = [exe, "--net", "--pid", "--fork", "--kill-child"] + (["--map-root-user"] if os.geteuid() else [])
    try:
        ok = subprocess.run(cmd + ["true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return cmd if ok else []


@functools.cache
def containment():
    """What the executor can do here, probed once per process: namespaces, and as root the user
    the programs run as (nobody; keeping read access to all files only if the interpreter needs it)."""
    box = {"prefix": _namespaces(), "uid": 0, "keep_read": False}
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam("nobody").pw_uid
        except KeyError:
            nobody = 65534
        for keep_read in (False, True):  # the interpreter and its library must load as nobody
            trial = {**box, "uid": nobody, "keep_read": keep_read}
            if _run("import re, math, collections", "assert True", Limits(), trial).passed:
                box = trial
                break
    if not _run("", "assert True", Limits(), box).passed:
        raise RuntimeError(f"execute.py: the harness cannot run a trivial program here ({box})")
    return {**box, "network_isolated": bool(box["prefix"]), "pid_namespace": bool(box["prefix"]),
            "runs_as": "nobody" if box["uid"] else pwd.getpwuid(os.geteuid()).pw_name}

# -----------------------------------------------------------------------------
# one run


def _end(proc, pid_namespace):
    """Kill everything the run started and reap it. In a PID namespace: kill its first process,
    whose exit makes the kernel kill all the others before unshare returns; else the process group."""
    children = []
    if pid_namespace:
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:
            pass
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not children:
        _killpg(proc)
    proc.stdout.close()  # unshare reports its child's death on stderr: a full pipe must not block it
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _killpg(proc)
        proc.wait()


def _killpg(proc):
    """SIGKILL the run's process group; called before the leader is reaped, so its pid (the group id)
    cannot have been reused."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(proc):
    """Whether the child has exited, without reaping it (so its group id stays ours)."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _watch(proc, report_fd, nonce_fd, limits, deadline):
    """Read the child's output and report pipe until it passes, fails, hangs or floods; (passed, status, output)."""
    nonce, report, out = secrets.token_hex(16).encode(), b"", bytearray()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(report_fd, selectors.EVENT_READ)
    status = None
    try:
        while status is None and sel.get_map():
            events = sel.select(max(0.0, min(0.1, deadline - time.monotonic())))
            for key, _ in events:
                data = os.read(key.fd, 1 << 16)
                if not data:
                    sel.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    out += data
                    if len(out) > limits.output_kb * 1024:
                        status = "output limit"
                else:
                    report += data
                    if report == b"done\n":
                        os.write(nonce_fd, nonce)
                    elif report == b"done\n" + nonce:
                        status = "passed"
            if status is None and time.monotonic() >= deadline:
                status = "timeout"
            elif status is None and not events and _exited(proc):  # its children may hold the pipes open
                break
    finally:
        sel.close()
    return status == "passed", status or "failed", bytes(out[-2000:]).decode("utf-8", "replace")


def _run(program, tests, limits, box):
    start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="execute-")
    fds = []
    try:
        for name, text in (("program.py", program), ("tests.py", tests)):
            with open(os.path.join(tmp, name), "w", encoding="utf-8", errors="replace") as f:
                f.write(text)
        if box["uid"]:
            os.chown(tmp, box["uid"], box["uid"])
        report_r, report_w = os.pipe()
        nonce_r, nonce_w = os.pipe()
        fds = [report_r, report_w, nonce_r, nonce_w]
        mb = 1024 * 1024
        cmd = box["prefix"] + [sys.executable, "-I", "-S", "-c", HARNESS, str(report_w), str(nonce_r), str(box["uid"]),
                               str(limits.cpu_s), str(limits.memory_mb * mb), str(limits.file_mb * mb), str(limits.procs)]
        env = {"HOME": tmp, "TMPDIR": tmp, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        if box["keep_read"]:
            env["EXECUTE_KEEP_READ"] = "1"
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, pass_fds=(report_w, nonce_r), start_new_session=True)
        for fd in (report_w, nonce_r):
            os.close(fd)
            fds.remove(fd)
        try:
            passed, status, output = _watch(proc, report_r, nonce_w, limits, start + limits.wall_s)
        finally:
            _end(proc, bool(box["prefix"]))
    finally:
        for fd in fds:
            os.close(fd)
        _remove(tmp)
    return Result(passed, status, output, time.monotonic() - start)


def _remove(path):
    """Delete the run's directory, whatever permissions the program left on what it made."""
    def retry(func, p, _):
        os.chmod(os.path.dirname(p), 0o700)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o700)
        func(p)
    shutil.rmtree(path, onerror=retry)


def run(program, tests, limits=Limits()):
    """Run `program`, then `tests` (asserts) in its namespace, in a fresh contained interpreter."""
    return _run(program, tests, limits, containment())


def run_batch(jobs, limits=Limits(), workers=None):
    """run() for every (program, tests) pair, `workers` at a time (default: the usable CPU cores)."""
    jobs = list(jobs)
    box = containment()
    workers = workers or len(os.sched_getaffinity(0))
    with ThreadPoolExecutor(workers) as pool:  # threads only wait: the work is in the child processes
        return list(pool.map(lambda job: _run(job[0], job[1], limits, box), jobs))


if __name__ == "__main__":
    argparse.ArgumentParser(description="Print what this machine contains (python bench/bench_execute.py "
                                        "measures executions per second).").parse_args()
    print(json.dumps({k: v for k, v in containment().items() if k != "prefix"}, indent=2))
    print("limits:", json.dumps(asdict(Limits())))
