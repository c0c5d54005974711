"""learner_node: trains SAC (RLPD) on the transitions actors stream, publishes policy versions as ONNX.

A thin adapter over :class:`serl_ctrl.agents.sac.Learner`: transitions arrive on ``transitions``
(std_msgs/UInt8MultiArray, the pickle-free layout of :mod:`serl_ctrl.ros.transport`), are decoded
in the executor and handed to a worker thread that calls ``Learner.add_transition`` (which runs
the fixed update-to-data ratio per received env step). With ``demos`` set, every minibatch is
half demonstrations, half online data (RLPD), from the same episode folders ``serl-ctrl train
--demos`` reads.

Policy versions: the actor graph (encoder + tanh-Gaussian head: ``action``, ``mean``,
``log_std``) is exported to ONNX once at start (seconds), checked against torch with
onnxruntime (<= 1e-5), and from then on each version only swaps the weights in that graph
(:class:`serl_ctrl.export.versions.SacOnnxVersions`, milliseconds). Version 0 (the initial
weights, or the resumed ones) goes out at start, then one every ``publish_every`` policy updates,
on ``policy/onnx`` (transient-local: a late actor gets the latest) with its version, sha256,
task, obs and reward mode, and this process's random ``learner_id`` (a restarted learner's
versions start again at 0; actors accept them because the id changed).

Sequence numbers: the Learner counts gaps (lost transitions) and duplicates per actor; the node
logs every new gap with the actor's id and reports the totals in ``/diagnostics``. An actor that
restarts (a new ``session`` in the transition meta) starts its numbering again: that is logged,
not counted as duplicates. Transitions with another reward mode than the learner's are dropped,
counted and logged.

Checkpoints: with ``checkpoint_dir``, the whole learner (networks, optimisers, replay, counters,
RNG states) is saved atomically every ``checkpoint_every`` env steps and at shutdown
(:mod:`serl_ctrl.agents.checkpoint`); ``resume`` continues from the newest one.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import UInt8MultiArray

from . import transport
from .common import LATCHED_QOS, STATE_QOS, STREAM_QOS, diagnostic_array, run_node
from .params import LEARNER_NODE, ParameterError, declare, on_set_validator


class LearnerNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("learner_node", **kwargs)
        p = self.params = declare(self, LEARNER_NODE)
        self.add_on_set_parameters_callback(on_set_validator(LEARNER_NODE, self))
        from ..agents.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
        from ..agents.sac import Learner, SACAgent
        from ..agents.train_sac import demo_buffer
        from ..export.versions import SacOnnxVersions
        from ..runtime.spec import PolicySpec
        from ..utils.device import resolve_device

        log = self.get_logger()
        if p["threads"]:
            import torch

            torch.set_num_threads(p["threads"])
        if p["resume"] and not p["checkpoint_dir"]:
            raise ParameterError("resume is true but checkpoint_dir is empty: say where the checkpoints are")
        try:
            obs_space, act_space = transport.env_spaces(p["task"], p["obs"])
            config = transport.sac_config(p["sac_config"])
            spaces = SimpleNamespace(observation_space=obs_space, action_space=act_space)
            demos = demo_buffer(p["demos"], spaces, reward=p["reward"]) if p["demos"] else None
        except (ValueError, FileNotFoundError) as exc:
            raise ParameterError(str(exc)) from None
        try:
            device = resolve_device(p["device"], "parameter 'device'")
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        self.agent = SACAgent(obs_space, act_space, config, seed=p["seed"], device=device)
        self.learner = Learner(self.agent, demo_buffer=demos, seed=p["seed"])
        self.resumed_from = ""
        resumed_sessions: dict[int, str] = {}
        if p["resume"]:
            latest = latest_checkpoint(p["checkpoint_dir"])
            if latest is None:
                log.warning(f"resume: no checkpoint in {p['checkpoint_dir']} yet; starting fresh")
            else:
                try:
                    meta = load_checkpoint(latest, self.learner)
                except (CheckpointError, ValueError, KeyError) as exc:
                    raise ParameterError(f"resume from {latest}: {exc}") from None
                saved = meta.get("extra", {}).get("learner_node", {})
                clash = {k: (saved[k], p[k]) for k in ("task", "obs", "reward") if k in saved and saved[k] != p[k]}
                if clash:
                    raise ParameterError(f"resume from {latest}: the checkpoint was trained with " + ", ".join(
                        f"{k}={a!r} (now {b!r})" for k, (a, b) in clash.items()))
                self.resumed_from = str(latest)
                resumed_sessions = {int(k): str(v) for k, v in saved.get("sessions", {}).items()}
                log.info(f"resumed from {latest}: {self.learner.env_steps} env steps, policy version "
                         f"{self.learner.policy_version}")
        self.learner_id = uuid.uuid4().hex[:16]
        spec = PolicySpec.from_spaces(obs_space, act_space, algo="sac", task=p["task"], obs_mode=p["obs"],
                                      extra={"source": "learner_node", "learner_id": self.learner_id,
                                             "reward": p["reward"]})
        start = time.perf_counter()
        try:
            self.versions = SacOnnxVersions(self.agent, spec, recorded_obs=_recorded(demos, 8))
        except ValueError as exc:
            raise ParameterError(f"cannot export the policy to ONNX: {exc}") from None
        self.pub_policy = self.create_publisher(UInt8MultiArray, "policy/onnx", LATCHED_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", STATE_QOS)
        self.create_subscription(UInt8MultiArray, "transitions", self._on_transition, STREAM_QOS)
        self.create_timer(1.0 / p["diagnostics_hz"], self._publish_diagnostics,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.received = 0
        self.malformed = 0
        self.mismatched = 0
        self.restarts = 0
        self.checkpoints = 0
        self.published_version = -1
        self.publish_failures = 0
        self._next_publish = 0
        self.last_export_ms = 0.0
        self.versions_parity = float("nan")
        self.last_metrics: dict = {}
        self._sessions: dict[int, str] = resumed_sessions  # actor id -> session of its last transition
        self._reported_gaps = self.learner.gaps
        self._last_checkpoint_step = self.learner.env_steps
        self._queue: queue.Queue = queue.Queue(maxsize=100_000)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._publish_policy()
        if self.published_version < 0:
            raise ParameterError("the first policy version failed its ONNX check (see the error above)")
        log.info(f"policy graph exported to ONNX in {time.perf_counter() - start:.1f} s (parity "
                 f"{self.versions_parity:.2g}; {len(self.versions.mapped)} weights swapped per version)")
        self._worker = threading.Thread(target=self._work, name="learner", daemon=True)
        self._worker.start()
        log.info(
            f"learner {self.learner_id}: task={p['task']} obs={p['obs']} reward={p['reward']} utd={config.utd} "
            f"batch={config.batch_size} learning_starts={config.learning_starts}; "
            f"{len(demos) if demos is not None else 0} demo transitions; a policy version every "
            f"{p['publish_every']} updates on policy/onnx"
            + (f"; checkpoints every {p['checkpoint_every']} env steps in {p['checkpoint_dir']}"
               if p["checkpoint_dir"] else "")
        )

    def _on_transition(self, msg: UInt8MultiArray) -> None:
        try:
            transition, meta = transport.msg_to_transition(msg)
        except Exception as exc:  # noqa: BLE001 - a malformed message is counted and dropped
            self.malformed += 1
            self.get_logger().error(f"dropped a malformed transition: {exc}", throttle_duration_sec=5.0)
            return
        self.received += 1
        if meta.get("reward", self.params["reward"]) != self.params["reward"]:
            self.mismatched += 1
            self.get_logger().error(
                f"dropped a transition with {meta.get('reward')} reward from actor {transition.actor_id}: this "
                f"learner trains on {self.params['reward']} rewards (set the actor's reward parameter)",
                throttle_duration_sec=5.0)
            return
        try:
            self._queue.put_nowait((transition, meta))
        except queue.Full:
            self.get_logger().error("the learner is too slow: transition queue full, dropping",
                                    throttle_duration_sec=5.0)

    def _work(self) -> None:
        """The only thread that touches the Learner (it is not thread-safe)."""
        log = self.get_logger()
        while not self._stop.is_set():
            try:
                t, meta = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                with self._lock:
                    self._check_session(t, meta)
                    metrics = self.learner.add_transition(t)
                    gaps, version = self.learner.gaps, self.learner.policy_version
            except Exception as exc:  # noqa: BLE001 - keep learning from the next transitions
                log.error(f"learner update failed: {exc}")
                continue
            if metrics is not None:
                self.last_metrics = metrics
            if gaps > self._reported_gaps:
                log.warning(f"sequence gap from actor {t.actor_id}: {gaps - self._reported_gaps} transition(s) "
                            f"lost before seq {t.seq} ({gaps} in total)")
                self._reported_gaps = gaps
            if version >= self._next_publish:
                self._publish_policy()
            if (self.params["checkpoint_dir"]
                    and self.learner.env_steps - self._last_checkpoint_step >= self.params["checkpoint_every"]):
                self._checkpoint()

    def _check_session(self, t, meta: dict) -> None:
        """A new session of a known actor id restarted its sequence numbers: not duplicates."""
        session = str(meta.get("session", ""))
        known = self._sessions.get(t.actor_id)
        if known is not None and session != known:
            self.restarts += 1
            # Learner keeps the last sequence number per actor; forget it for the restarted actor.
            self.learner._last_seq.pop(t.actor_id, None)
            self.get_logger().info(f"actor {t.actor_id} restarted (session {session}): its sequence numbers "
                                   f"start again at {t.seq}")
        self._sessions[t.actor_id] = session

    def _publish_policy(self) -> None:
        with self._lock:
            state = self.learner.actor_state_dict()
            version = self.learner.policy_version
            env_steps = self.learner.env_steps
        self._next_publish = version + self.params["publish_every"]
        try:
            v = self.versions.version(state, version)
        except ValueError as exc:  # a mapping or parity failure: say so loudly, keep the last version
            self.publish_failures += 1
            self.get_logger().error(f"policy version {version} not published (the actors keep version "
                                    f"{self.published_version}): {exc}")
            return
        p = self.params
        self.pub_policy.publish(transport.onnx_to_msg(v.data, version, v.sha256, task=p["task"], obs=p["obs"],
                                                      reward=p["reward"], learner_id=self.learner_id,
                                                      env_steps=env_steps))
        self.published_version = version
        self.last_export_ms = v.export_ms
        if v.parity_max_abs_diff == v.parity_max_abs_diff:  # checked (not NaN)
            self.versions_parity = v.parity_max_abs_diff

    def _checkpoint(self) -> None:
        from ..agents.checkpoint import save_checkpoint

        p = self.params
        with self._lock:
            start = time.perf_counter()
            path = save_checkpoint(p["checkpoint_dir"], self.learner, extra={"learner_node": {
                "task": p["task"], "obs": p["obs"], "reward": p["reward"], "learner_id": self.learner_id,
                "published_version": self.published_version,
                "sessions": {str(k): v for k, v in self._sessions.items()}}})
            self._last_checkpoint_step = self.learner.env_steps
        self.checkpoints += 1
        self.get_logger().info(f"checkpoint {path.name} ({(time.perf_counter() - start) * 1e3:.0f} ms)",
                               throttle_duration_sec=30.0)

    def _publish_diagnostics(self) -> None:
        lr = self.learner
        values = {
            "learner_id": self.learner_id, "received": self.received, "env_steps": lr.env_steps,
            "policy_version": lr.policy_version, "published_version": self.published_version, "gaps": lr.gaps,
            "duplicates": lr.duplicates, "malformed": self.malformed, "mismatched_reward": self.mismatched,
            "actor_restarts": self.restarts, "queue": self._queue.qsize(), "replay_size": len(lr.online),
            "export_ms": self.last_export_ms, "publish_failures": self.publish_failures,
            "checkpoints": self.checkpoints,
            **{k: float(v) for k, v in self.last_metrics.items()},
        }
        level = "warn" if lr.gaps or self.malformed or self.mismatched or self.publish_failures else "ok"
        message = f"{lr.gaps} transitions lost" if lr.gaps else ("learning" if lr.ready else "collecting")
        self.pub_diag.publish(diagnostic_array(self.get_clock().now().to_msg(), "learner_node: training",
                                               "learner", level, message, values))

    def stats(self) -> dict:
        lr = self.learner
        return {"received": self.received, "env_steps": lr.env_steps, "policy_version": lr.policy_version,
                "published_version": self.published_version, "gaps": lr.gaps, "duplicates": lr.duplicates,
                "malformed": self.malformed, "mismatched_reward": self.mismatched, "actor_restarts": self.restarts,
                "checkpoints": self.checkpoints}

    def close(self) -> None:
        """Stop the worker; with checkpoint_dir, save what was learned since the last checkpoint."""
        self._stop.set()
        self._worker.join(timeout=30)
        if self.params["checkpoint_dir"] and self.learner.env_steps > self._last_checkpoint_step:
            try:
                self._checkpoint()
            except Exception as exc:  # noqa: BLE001 - shutting down: report, do not raise
                self.get_logger().error(f"final checkpoint failed: {exc}")


def _recorded(demos, n: int) -> list:
    """Up to ``n`` batch-1 observations spread over the demonstrations (for the parity checks)."""
    if demos is None or demos.frames_stored == 0:
        return []
    frames = demos.stored_frames()
    total = demos.frames_stored
    picks = sorted({int(i) for i in np.linspace(0, total - 1, min(n, total)).round()})
    return [{k: v[i:i + 1] for k, v in frames.items()} for i in picks]


def main(args=None) -> None:
    sys.exit(run_node("learner_node", LearnerNode, args=args))


if __name__ == "__main__":
    main()
