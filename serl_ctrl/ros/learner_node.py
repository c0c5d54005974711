"""learner_node: trains SAC (RLPD) on the transitions actors stream, publishes new actor weights.

A thin adapter over :class:`serl_ctrl.agents.sac.Learner`: transitions arrive on ``transitions``
(std_msgs/UInt8MultiArray, the pickle-free layout of :mod:`serl_ctrl.ros.transport`), are decoded
in the executor and handed to a worker thread that calls ``Learner.add_transition`` (which runs
the fixed update-to-data ratio per received env step). Every ``publish_every`` policy updates the
actor weights go out on ``policy/weights`` (transient-local: a late actor gets the latest), tagged
with the policy version; version 0 (the initial weights) is published at start.

Sequence numbers: the Learner counts gaps (lost transitions) and duplicates per actor; the node
logs every new gap with the actor's id and reports the totals in ``/diagnostics``.
"""

from __future__ import annotations

import queue
import sys
import threading

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
        from ..agents.sac import Learner, SACAgent

        try:
            obs_space, act_space = transport.env_spaces(p["task"], p["obs"])
            config = transport.sac_config(p["sac_config"])
        except (ValueError, FileNotFoundError) as exc:
            raise ParameterError(str(exc)) from None
        self.agent = SACAgent(obs_space, act_space, config, seed=p["seed"])
        self.learner = Learner(self.agent, seed=p["seed"])
        self.pub_weights = self.create_publisher(UInt8MultiArray, "policy/weights", LATCHED_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", STATE_QOS)
        self.create_subscription(UInt8MultiArray, "transitions", self._on_transition, STREAM_QOS)
        self.create_timer(1.0 / p["diagnostics_hz"], self._publish_diagnostics,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.received = 0
        self.malformed = 0
        self.published_version = -1
        self.last_metrics: dict = {}
        self._reported_gaps = 0
        self._queue: queue.Queue = queue.Queue(maxsize=100_000)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._publish_weights()
        self._worker = threading.Thread(target=self._work, name="learner", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"learner: task={p['task']} obs={p['obs']} utd={config.utd} batch={config.batch_size} "
            f"learning_starts={config.learning_starts}; weights every {p['publish_every']} updates"
        )

    def _on_transition(self, msg: UInt8MultiArray) -> None:
        try:
            transition, _meta = transport.msg_to_transition(msg)
        except Exception as exc:  # noqa: BLE001 - a malformed message is counted and dropped
            self.malformed += 1
            self.get_logger().error(f"dropped a malformed transition: {exc}", throttle_duration_sec=5.0)
            return
        self.received += 1
        try:
            self._queue.put_nowait(transition)
        except queue.Full:
            self.get_logger().error("the learner is too slow: transition queue full, dropping",
                                    throttle_duration_sec=5.0)

    def _work(self) -> None:
        """The only thread that touches the Learner (it is not thread-safe)."""
        log = self.get_logger()
        while not self._stop.is_set():
            try:
                t = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                with self._lock:
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
            if version - max(self.published_version, 0) >= self.params["publish_every"]:
                self._publish_weights()

    def _publish_weights(self) -> None:
        with self._lock:
            state = self.learner.actor_state_dict()
            version = self.learner.policy_version
        self.pub_weights.publish(transport.weights_to_msg(state, version, task=self.params["task"],
                                                          obs=self.params["obs"]))
        self.published_version = version

    def _publish_diagnostics(self) -> None:
        lr = self.learner
        values = {
            "received": self.received, "env_steps": lr.env_steps, "policy_version": lr.policy_version,
            "published_version": self.published_version, "gaps": lr.gaps, "duplicates": lr.duplicates,
            "malformed": self.malformed, "queue": self._queue.qsize(), "replay_size": len(lr.online),
            **{k: float(v) for k, v in self.last_metrics.items()},
        }
        level = "warn" if lr.gaps or self.malformed else "ok"
        message = f"{lr.gaps} transitions lost" if lr.gaps else ("learning" if lr.ready else "collecting")
        self.pub_diag.publish(diagnostic_array(self.get_clock().now().to_msg(), "learner_node: training",
                                               "learner", level, message, values))

    def stats(self) -> dict:
        lr = self.learner
        return {"received": self.received, "env_steps": lr.env_steps, "policy_version": lr.policy_version,
                "published_version": self.published_version, "gaps": lr.gaps, "duplicates": lr.duplicates,
                "malformed": self.malformed}

    def close(self) -> None:
        self._stop.set()
        self._worker.join(timeout=5)


def main(args=None) -> None:
    sys.exit(run_node("learner_node", LearnerNode, args=args))


if __name__ == "__main__":
    main()
