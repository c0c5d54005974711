"""speech_node: spoken corrections -> ``transcript`` and ``correction`` topics (std_msgs/String).

Audio comes from the microphone (``device``; needs sounddevice and PortAudio) or, for tests and
recorded commands, from WAV files (``wav_files``, recognised one after the other, ``wav_period_s``
apart). Recognition is offline (:class:`serl_ctrl.language.speech.Recognizer`: pocketsphinx with a
grammar of the command vocabulary) and runs in a worker thread, so the node keeps spinning.

For every utterance:

* ``transcript`` gets the words heard (also when they mean nothing to the robot);
* ``correction`` gets the canonical instruction (``"move a bit to the left"``) when the words parse
  into a command with enough confidence. Unrecognised speech publishes nothing there and is logged:
  it changes nothing. ``"stop"`` is never rejected for low confidence and goes out first, the moment
  it is recognised (a warning is logged too).

The words are only ever matched against the vocabulary (:func:`serl_ctrl.language.vocabulary.parse`);
nothing heard is executed. The planner node turns corrections into the instruction the policy follows.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from rclpy.node import Node
from std_msgs.msg import String

from .common import COMMAND_QOS, run_node
from .params import SPEECH_NODE, ParameterError, declare


class SpeechNode(Node):
    """See the module docstring. ``recognizer`` (tests) defaults to the offline Recognizer."""

    def __init__(self, recognizer=None, **kw) -> None:
        super().__init__("speech_node", **kw)
        self.params = declare(self, SPEECH_NODE)
        files = [f.strip() for f in self.params["wav_files"].split(",") if f.strip()]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise ParameterError(f"parameter 'wav_files': no such file(s) {missing}")
        self.files = files
        self.pub_transcript = self.create_publisher(String, "transcript", COMMAND_QOS)
        self.pub_correction = self.create_publisher(String, "correction", COMMAND_QOS)
        self.heard = 0
        self.published = 0
        self.unrecognised = 0
        self._stop = threading.Event()
        if recognizer is None:
            from ..language.speech import Recognizer

            recognizer = Recognizer(min_confidence=self.params["min_confidence"])
        self.recognizer = recognizer
        self._worker = threading.Thread(target=self._run, daemon=True, name="speech")
        self._worker.start()
        source = f"{len(files)} WAV file(s)" if files else f"audio device {self.params['device'] or 'default'}"
        self.get_logger().info(f"listening to {source}")

    # --- recognition (worker thread) -----------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.files:
                for path in self.files:
                    if self._stop.wait(self.params["wav_period_s"]):
                        return
                    self.publish_recognition(self.recognizer.recognize_file(path), path)
                self.get_logger().info(f"all {len(self.files)} WAV file(s) recognised")
            else:
                device = self.params["device"] or None
                if device is not None and device.isdigit():
                    device = int(device)
                for r in self.recognizer.listen(device):
                    if self._stop.is_set():
                        return
                    self.publish_recognition(r, "microphone")
        except Exception as exc:  # noqa: BLE001 - report and keep the node alive (no audio, no commands)
            self.get_logger().error(f"speech input stopped: {exc}")

    def publish_recognition(self, r, where: str = "") -> None:
        """Publish one recognition: the transcript always, the correction when understood."""
        self.heard += 1
        cmd = r.command
        if cmd is not None and cmd.kind == "stop":
            self.pub_correction.publish(String(data=cmd.instruction))  # first, before anything else
            self.published += 1
            self.get_logger().warning(f"STOP heard ({where}, {r.latency_ms:.0f} ms)")
            self.pub_transcript.publish(String(data=r.text))
            return
        self.pub_transcript.publish(String(data=r.text))
        if cmd is None:
            self.unrecognised += 1
            self.get_logger().warning(f"not understood, nothing changes: {r.text!r} "
                                      f"(confidence {r.confidence:.2f}, {where})")
            return
        self.pub_correction.publish(String(data=cmd.instruction))
        self.published += 1
        self.get_logger().info(f"correction: {cmd.instruction!r} (heard {r.text!r}, confidence "
                               f"{r.confidence:.2f}, {r.latency_ms:.0f} ms, {where})")

    def close(self) -> None:
        self._stop.set()
        self._worker.join(timeout=2.0)


def main(args=None) -> None:
    sys.exit(run_node("speech_node", SpeechNode, args=args))


if __name__ == "__main__":
    main()
