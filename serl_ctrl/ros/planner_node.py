"""planner_node: the high-level planner of the language hierarchy, over ROS topics.

Loads a planner (``planner`` parameter: written by ``serl-ctrl train-planner`` or
``finetune-planner``), builds its observation history from the arm's topics (the same mapping as
the policy node: ``tcp_pose``, ``tcp_twist``, ``joint_states``, ``objects/<name>/pose``) and, at
``rate_hz``, publishes the instruction in force on ``instruction`` (std_msgs/String, reliable and
transient-local: a policy node that starts later gets the current one at once).

Corrections arrive on ``correction`` (std_msgs/String, from speech_node or typed: any words, parsed
against the vocabulary). A recognised correction overrides the planner immediately (it is
published at once, without waiting for the next tick) and holds for ``hold_steps`` ticks or until
the planner agrees and then moves on; "stop" is published at once and holds until the next
correction. Unrecognised words change nothing and are logged. With ``corrections_log`` set, every
correction is written with its observation history to that .npz file for ``serl-ctrl
finetune-planner``.

The arbitration is :class:`serl_ctrl.language.hierarchy.InstructionArbiter`, the same code the
in-process hierarchy runs; this node only adapts it to topics.
"""

from __future__ import annotations

import sys

from rclpy.node import Node
from std_msgs.msg import String

from ..runtime.safety import stale_inputs
from . import convert
from .common import COMMAND_QOS, LATCHED_QOS, guarded, run_node, subscribe_observations
from .params import PLANNER_NODE, ParameterError, declare


class PlannerNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs) -> None:
        super().__init__("planner_node", **kwargs)
        self.params = p = declare(self, PLANNER_NODE)
        from ..language.corrections import CorrectionLog
        from ..language.hierarchy import InstructionArbiter
        from ..language.planner import Planner, PlannerRunner

        if not p["planner"]:
            raise ParameterError("parameter 'planner' is empty: give a folder written by `serl-ctrl train-planner`")
        try:
            model = Planner.load(p["planner"])
        except (FileNotFoundError, ValueError) as exc:
            raise ParameterError(f"parameter 'planner': {exc}") from None
        self.log_path = p["corrections_log"] or None
        if self.log_path is not None and not self.log_path.endswith(".npz"):
            raise ParameterError(f"parameter 'corrections_log' must name a .npz file, got {self.log_path!r}")
        log = CorrectionLog(model.obs_keys, model.n_obs_steps, {"planner": p["planner"], "source": "planner_node"}) \
            if self.log_path else None
        self.arbiter = InstructionArbiter(PlannerRunner(model, dwell=p["dwell"]), hold_steps=p["hold_steps"], log=log)
        try:
            self.builder = convert.ObservationBuilder({k: ((d,), "float32") for k, d in model.obs_dims.items()})
        except ValueError as exc:
            raise ParameterError(f"planner {p['planner']!r}: {exc}") from None
        self.errors = 0
        self.ticks = 0
        self.published: list[str] = []
        self._tcp = None
        self._subs = subscribe_observations(self, self.builder, self._on_tcp, lambda fn, *a: guarded(self, fn, *a))
        self.pub = self.create_publisher(String, "instruction", LATCHED_QOS)
        self.sub_correction = self.create_subscription(String, "correction", self._on_correction, COMMAND_QOS)
        self.timer = self.create_timer(1.0 / p["rate_hz"], self._tick)
        self._last = ""
        self._hold_reason = ""
        self.get_logger().info(f"planner {p['planner']!r}: observations {list(model.obs_keys)}, history "
                               f"{model.n_obs_steps}, instructions {model.instructions}")

    def _on_tcp(self, pos, quat, stamp, recv) -> None:
        self._tcp = stamp

    def _publish(self, instruction: str) -> None:
        self.pub.publish(String(data=instruction))
        self.published.append(instruction)
        if len(self.published) > 1000:
            del self.published[:500]
        if instruction != self._last:
            self.get_logger().info(f"instruction: {instruction!r} ({self.arbiter.source})")
        self._last = instruction

    def _on_correction(self, msg: String) -> None:
        text = msg.data
        cmd = self.arbiter.correct(text, "ros")
        if cmd is None:
            self.get_logger().warning(f"not understood, nothing changes: {text!r}")
            return
        if cmd.kind == "speed":
            self.get_logger().warning(f"{cmd.instruction!r}: speed changes are not forwarded to the policy node")
            return
        self._publish(cmd.instruction)  # at once: a correction does not wait for the next tick
        self._save_log()

    def _save_log(self) -> None:
        if self.log_path and self.arbiter.log is not None and len(self.arbiter.log):
            try:
                self.arbiter.log.save(self.log_path)
            except OSError as exc:
                self.get_logger().error(f"could not write the corrections log {self.log_path}: {exc}")

    def _tick(self) -> None:
        now = self.get_clock().now().nanoseconds * 1e-9
        stamps = dict(self.builder.stamps())
        stale = stale_inputs(stamps, now, self.params["command_timeout_s"])
        if stale:
            if self.arbiter.stopped:
                self._publish("stop")
            reason = ", ".join(sorted(stale))
            if reason != self._hold_reason:
                self.get_logger().warning(f"no planner decision: stale or missing inputs ({reason})")
                self._hold_reason = reason
            return
        self._hold_reason = ""
        n_log = len(self.arbiter.log) if self.arbiter.log is not None else 0
        try:
            instruction, _ = self.arbiter.tick(self.builder.build())
        except (KeyError, ValueError) as exc:
            self.errors += 1
            self.get_logger().error(f"planner tick failed: {exc}", throttle_duration_sec=5.0)
            return
        self.ticks += 1
        self._publish(instruction)
        if self.arbiter.log is not None and len(self.arbiter.log) != n_log:
            self._save_log()

    def close(self) -> None:
        self._save_log()


def main(args=None) -> None:
    sys.exit(run_node("planner_node", PlannerNode, args=args))


if __name__ == "__main__":
    main()
