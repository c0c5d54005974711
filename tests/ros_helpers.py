"""Helpers for the ROS 2 tests: real rclpy, one DDS domain per test, nodes as processes.

* ``ros_domain`` (fixture): a random ROS_DOMAIN_ID that no other serl_ctrl test run on this machine
  holds (reserved with a lock file for the test's duration), set in this process's environment
  with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST; ``ros_domain.env`` is the environment to give
  subprocesses.
* ``RosHarness``: an rclpy context in that domain with one node spun in a background thread, and
  helpers to wait for messages, call services and publish.
* ``NodeProcess``: ``python -m serl_ctrl.ros.<module> --ros-args -p k:=v`` as a subprocess, its
  log captured to a file, stopped with SIGINT.

The tests skip (with the reason) only when rclpy cannot be imported; scripts/test.sh installs it.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent

try:
    import rclpy  # noqa: F401
    from rclpy.executors import SingleThreadedExecutor

    RCLPY_ERROR = ""
except ImportError as exc:  # pragma: no cover - CI installs the ROS 2 wheels
    RCLPY_ERROR = f"rclpy cannot be imported ({exc}); `bash scripts/install.sh --test` installs ROS 2 Jazzy wheels"

needs_rclpy = pytest.mark.skipif(bool(RCLPY_ERROR), reason=RCLPY_ERROR or "rclpy available")

_LOCK_DIR = Path(tempfile.gettempdir()) / "serl_ctrl_ros_domains"
DOMAIN_IDS = range(1, 102)  # 0 is everyone's default; above 101 ports collide with ephemeral ones on Linux


class Domain(int):
    """A reserved ROS domain id (an int) with ``env``: the environment for subprocesses."""

    env: dict[str, str]
    _lock: Any


def reserve_domain(rng: random.Random | None = None) -> Domain:
    """A random domain id nobody else on this machine holds (lock file in the temp folder)."""
    rng = rng or random.Random()
    _LOCK_DIR.mkdir(exist_ok=True)
    taken = os.environ.get("ROS_DOMAIN_ID")
    candidates = [d for d in DOMAIN_IDS if str(d) != taken]
    rng.shuffle(candidates)
    for d in candidates:
        f = open(_LOCK_DIR / f"{d}.lock", "w")  # noqa: SIM115 - held for the test's duration
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        dom = Domain(d)
        dom._lock = f
        env = dict(os.environ)
        env.update(ROS_DOMAIN_ID=str(d), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
                   RCUTILS_LOGGING_BUFFERED_STREAM="0", RCUTILS_COLORIZED_OUTPUT="0")
        env.pop("ROS_LOCALHOST_ONLY", None)
        dom.env = env
        return dom
    raise RuntimeError(f"no free ROS domain id in {DOMAIN_IDS}")


def release_domain(dom: Domain) -> None:
    fcntl.flock(dom._lock, fcntl.LOCK_UN)
    dom._lock.close()


@pytest.fixture
def ros_domain(monkeypatch):
    if RCLPY_ERROR:
        pytest.skip(RCLPY_ERROR)
    dom = reserve_domain()
    monkeypatch.setenv("ROS_DOMAIN_ID", str(int(dom)))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.delenv("ROS_LOCALHOST_ONLY", raising=False)
    try:
        yield dom
    finally:
        release_domain(dom)


# --- an in-process ROS participant ---------------------------------------------------------------


class Latest:
    """Collects messages of one subscription: ``msgs`` (all, bounded), ``last``, ``count``."""

    def __init__(self, keep: int = 2000) -> None:
        self.msgs: list = []
        self.keep = keep
        self.count = 0
        self.recv_times: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, msg) -> None:
        with self._lock:
            self.count += 1
            self.msgs.append(msg)
            self.recv_times.append(time.monotonic())
            if len(self.msgs) > self.keep:
                del self.msgs[0]
                del self.recv_times[0]

    @property
    def last(self):
        with self._lock:
            return self.msgs[-1] if self.msgs else None


class RosHarness:
    """One rclpy context in the test's domain, a node, and a background executor thread."""

    def __init__(self, domain: int, name: str = "test_harness", parameter_overrides=None) -> None:
        import rclpy
        from rclpy.node import Node

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(domain))
        self.node = Node(name, context=self.context, parameter_overrides=parameter_overrides or [])
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._extra_nodes = []
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.02)
            except Exception:  # noqa: BLE001 - shutting down
                if self._stop or not self.context.ok():
                    return
                raise

    def add_node(self, node) -> None:
        self._extra_nodes.append(node)
        self.executor.add_node(node)

    def subscribe(self, msg_type, topic: str, qos=10) -> Latest:
        latest = Latest()
        self.node.create_subscription(msg_type, topic, latest, qos)
        return latest

    def publisher(self, msg_type, topic: str, qos=10):
        return self.node.create_publisher(msg_type, topic, qos)

    def call(self, srv_type, name: str, request, timeout: float = 10.0):
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {name} not available after {timeout} s")
            future = client.call_async(request)
            deadline = time.monotonic() + timeout
            while not future.done():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"service {name} did not answer in {timeout} s")
                time.sleep(0.01)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        for node in self._extra_nodes:
            self.executor.remove_node(node)
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
        self.context.try_shutdown()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition", period: float = 0.02):
    """Poll ``predicate`` until truthy; return its value or fail the test saying ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(period)


# --- nodes as processes ---------------------------------------------------------------------------


class NodeProcess:
    """A serl_ctrl node run as ``python -m serl_ctrl.ros.<module>`` with ROS parameters."""

    def __init__(self, module: str, domain: Domain, params: dict[str, Any] | None = None,
                 remaps: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
        args = [sys.executable, "-m", f"serl_ctrl.ros.{module}", "--ros-args"]
        for key, value in (params or {}).items():
            args += ["-p", f"{key}:={_ros_value(value)}"]
        for src, dst in (remaps or {}).items():
            args += ["-r", f"{src}:={dst}"]
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="serl_ctrl_ros_"))
        self.log_path = log_dir / f"{module}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=domain.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 15.0) -> str:
        return wait_for(lambda: text in self.log() and self.log(), timeout, f"{text!r} in the node's log")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _ros_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    return repr(value)
