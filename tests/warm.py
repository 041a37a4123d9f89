"""Script runs for the suite, started warm: one process per pytest worker imports torch, transformers, peft and
the project once, and each `python script.py ...` is a fork of it that runs the script as __main__ (a cold start
spends ~4 s importing the same modules). The fork has the script's argv, cwd, environment, stdout and stderr, its
own pid (signals reach it) and exit status; only the modules are already imported. So a test of import-time
behaviour (environment read at import, imports from an installed wheel, torchrun) starts its process cold.

    out = warm.run([sys.executable, "train.py", ...], cwd=ROOT, capture_output=True, text=True, env=env)
    proc = warm.Popen([sys.executable, "-u", "train.py", ...], cwd=ROOT, stderr=subprocess.PIPE, text=True)
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_zygote, _lock = None, threading.Lock()


def script_argv(cmd):
    """(the script and its arguments, whether -u was given) of `python [-u] script.py ...`."""
    unbuffered = list(cmd[1:2]) == ["-u"]
    return list(cmd[1 + unbuffered :]), unbuffered


def warm_enough(cmd, cwd):
    """A `python [-u] script.py` of this checkout: the zygote's modules are its modules. Anything else (-m, -c,
    another program, a script of a copy of the repository) starts cold."""
    argv, _ = script_argv(cmd)
    if cmd[0] != sys.executable or not argv or argv[0].startswith("-"):
        return False
    return os.path.abspath(os.path.join(cwd, argv[0])).startswith(ROOT + os.sep)


def _ask(request):
    """Send one request to this worker's zygote (started on first use) and read its answer."""
    global _zygote
    with _lock:
        if _zygote is None or _zygote.poll() is not None:
            _zygote = subprocess.Popen(
                [sys.executable, __file__], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
        _zygote.stdin.write(json.dumps(request) + "\n")
        _zygote.stdin.flush()
        answer = _zygote.stdout.readline()
    if not answer:
        raise RuntimeError("tests/warm.py's zygote ended (its stderr says why: an import that fails?)")
    return json.loads(answer)


def Popen(cmd, cwd=ROOT, env=None, stdout=None, stderr=None, text=False, **more):
    """subprocess.Popen for a script: forked from the zygote (a Forked), or a cold subprocess.Popen (also where
    it takes more, a new session for instance)."""
    if warm_enough(cmd, cwd) and not more:
        return Forked(cmd, cwd, env, stdout, stderr, text)
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text, **more)


class Forked:
    """A script forked from the zygote, with subprocess.Popen's pid, poll, wait, send_signal, kill, communicate
    and returncode. stdout/stderr go to files, read back by communicate (None where not captured)."""

    def __init__(self, cmd, cwd, env, stdout, stderr, text):
        argv, unbuffered = script_argv(cmd)
        self.dir = tempfile.mkdtemp(prefix="warm-")  # removed once read back
        self.capture = {"stdout": stdout == subprocess.PIPE, "stderr": stderr == subprocess.PIPE}
        files = {k: os.path.join(self.dir, k) if v else os.devnull for k, v in self.capture.items()}
        env = dict(os.environ if env is None else env)
        request = dict(op="start", argv=argv, cwd=os.path.abspath(cwd), env=env, unbuffered=unbuffered, **files)
        self.pid, self.returncode, self.text = _ask(request)["pid"], None, text

    def poll(self):
        return self.wait(0, raises=False)

    def wait(self, timeout=None, raises=True):
        if self.returncode is None:
            self.returncode = _ask(dict(op="wait", pid=self.pid, timeout=timeout))["returncode"]
            if self.returncode is None and raises:
                raise subprocess.TimeoutExpired(self.pid, timeout)
            if self.returncode is not None and not any(self.capture.values()):
                shutil.rmtree(self.dir, ignore_errors=True)  # nothing to read back
        return self.returncode

    def send_signal(self, signum):
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def communicate(self, timeout=None):
        self.wait(timeout)
        out = tuple(self._read(k) for k in ("stdout", "stderr"))
        shutil.rmtree(self.dir, ignore_errors=True)
        return out

    def _read(self, name):
        if not self.capture[name]:
            return None
        with open(os.path.join(self.dir, name), "rb") as f:
            data = f.read()
        # text mode reads as subprocess's does: universal newlines (tqdm's carriage returns become line ends)
        return data.decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n") if self.text else data


def run(cmd, cwd=ROOT, env=None, capture_output=False, text=False, timeout=None):
    """subprocess.run for a script: a CompletedProcess; TimeoutExpired (the fork killed) past `timeout`."""
    if not warm_enough(cmd, cwd):
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=capture_output, text=text, timeout=timeout)
    pipe = subprocess.PIPE if capture_output else None
    proc = Popen(cmd, cwd=cwd, env=env, stdout=pipe, stderr=pipe, text=text)
    try:
        out, err = proc.communicate(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _serve():
    """The zygote: import once, then answer requests; a "start" forks, and the child leaves the loop."""
    sys.path.insert(0, ROOT)
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    import eval  # noqa: F401
    import train  # noqa: F401
    from tools import export, sft  # noqa: F401

    requests, answers = sys.stdin, os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a stray print cannot reach the answers
    for line in requests:
        request = json.loads(line)
        if request["op"] == "wait":
            deadline = None if request["timeout"] is None else time.time() + request["timeout"]
            while (done := os.waitpid(request["pid"], os.WNOHANG))[0] == 0:
                if deadline is not None and time.time() >= deadline:
                    break
                time.sleep(0.02)
            code = os.waitstatus_to_exitcode(done[1]) if done[0] else None
            answers.write(json.dumps({"returncode": code}) + "\n")
            answers.flush()
            continue
        pid = os.fork()
        if pid == 0:
            answers.close()
            break
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
    else:
        return
    # the child: become `python [-u] script.py argv...` in cwd with env
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], write), (2, request["stderr"], write)):
        new = os.open(path, mode)
        os.dup2(new, fd)
        os.close(new)
    sys.stdin = open(0)
    if request["unbuffered"]:  # python -u
        sys.stdout, sys.stderr = (
            io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), write_through=True) for fd in (1, 2)
        )
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # OMP read its environment when the zygote imported torch: the child's thread count is set here
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    script = request["argv"][0]
    sys.argv, sys.path[:2] = request["argv"], [os.path.dirname(os.path.abspath(script))]  # not ROOT, tests/
    import runpy

    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    _serve()
