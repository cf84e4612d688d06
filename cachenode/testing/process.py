"""One child service's lifecycle: start with its output logged, wait until ready, stop (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


class ChildProcess:
    """A service run as a child process (Azurite, a node, a mount): the lifecycle they share.

    A subclass says what to run (`command`, `environment`), where its output goes (`log_path`,
    appended to), and how to tell it is up (`wait_ready`). The child runs in its own session, so
    a Ctrl-C at the terminal reaches only the parent, which stops it. A child that does not come
    up is stopped before the error propagates. `stop` sends a signal (SIGTERM by default) and
    SIGKILLs the child if it has not exited within `stop_timeout` seconds.
    """

    stop_timeout = 10.0
    # True: the child's stdout is a text pipe `wait_ready` reads (stderr still goes to the log)
    pipe_stdout = False

    def __init__(self, log_path: str | Path) -> None:
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self._log_start = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The child's environment (None: this process's own)."""
        return None

    def prepare(self) -> None:
        """Before each start: create what the child needs (its folders; the log's folder)."""

    def wait_ready(self, timeout: float) -> None:
        """Return once the child is up; raise if it exits first or `timeout` passes."""
        raise NotImplementedError

    def start(self, timeout: float = 30.0):
        self.prepare()
        cmd, env = self.command(), self.environment()
        with open(self.log_path, "ab") as log:
            self._log_start = log.seek(0, os.SEEK_END)  # this start's own lines begin here
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE if self.pipe_stdout else log, stderr=log,
                                         env=env, text=self.pipe_stdout, start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def log_since_start(self) -> str:
        """What the child logged since its latest start."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the child with `sig` (SIGTERM: gracefully; SIGKILL: a crash), SIGKILL after
        `stop_timeout` s; returns its exit code (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        return code

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
