"""Offline speech recognition of the correction vocabulary (pocketsphinx + a JSGF grammar).

Everything runs on a CPU with the English acoustic model and dictionary that ship inside the
``pocketsphinx`` wheel: nothing is downloaded.

>>> rec = Recognizer()                          # doctest: +SKIP
>>> r = rec.recognize_file("move_left.wav")     # doctest: +SKIP
>>> r.text, r.confidence, r.command.instruction  # doctest: +SKIP
('move a bit to the left', 0.93, 'move a bit to the left')

How it works (each choice measured by ``bench/bench_speech.py``; see ``docs/speech.md``):

* **Grammar.** A JSGF grammar with one alternative per canonical instruction
  (:data:`serl_ctrl.language.vocabulary.INSTRUCTIONS`) is generated at run time into a temporary
  directory (``Decoder(jsgf=...)`` wants a file path). A free-form language model gets none of
  these commands right on synthetic speech; the grammar gets almost all of them.
* **"stop" has priority.** It carries a large grammar weight (``stop_weight``) and a second
  pronunciation (``S T AO P``, the British vowel), so a short, quiet or clipped "stop" is not
  heard as "go up"; on the synthetic test set this produced no false "stop" at all.
* **Conditioning.** The audio is resampled to 16 kHz mono 16-bit, leading/trailing digital
  silence is trimmed, ``pad_ms`` of silence is added on both sides, and low-level Gaussian noise
  (``noise_std``, deterministic seed) is mixed in: pocketsphinx's noise tracking and batch
  cepstral mean normalisation need some non-speech to estimate, and digital zeros break them.
* **Fallback.** If the first pass ends with no complete sentence of the grammar (the beam pruned
  every complete path), the utterance is decoded again with much wider beams.
* **Confidence.** pocketsphinx scores a path relative to the best senone of every frame, so
  ``score / speech_frames`` (log base 1.0001, <= 0) says how far the words the grammar forced
  on the audio are from what the acoustic model would have picked freely. It is mapped to
  [0, 1] with a logistic calibrated on in-vocabulary vs out-of-vocabulary synthetic speech
  (:data:`CONFIDENCE_MID`, :data:`CONFIDENCE_SCALE`): ~0.9 typical for a command, ~0.06 typical
  for a sentence that is not in the vocabulary. Below ``min_confidence`` the words are still
  reported but ``command`` is ``None`` (unrecognised speech changes nothing); "stop" is never
  rejected.
* **Latency** is measured from the moment the whole utterance is available (the call to
  :meth:`Recognizer.recognize`, or the end of speech found by the endpointer in
  :meth:`Recognizer.listen`) to the result.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from serl_ctrl.language.vocabulary import INSTRUCTIONS, Command, parse

__all__ = [
    "SAMPLE_RATE",
    "Recognition",
    "Recognizer",
    "UtteranceStream",
    "load_wav",
    "to_pcm16k",
    "grammar_text",
    "pocketsphinx_available",
    "espeak_binary",
    "synthesize",
    "CONFIDENCE_MID",
    "CONFIDENCE_SCALE",
]

#: pocketsphinx's acoustic model wants 16 kHz, 16-bit signed, mono.
SAMPLE_RATE = 16000

#: Per-frame score (log base 1.0001) at which the confidence is 0.5 (see module docstring).
CONFIDENCE_MID = -55.0
#: Width of the confidence logistic, same units.
CONFIDENCE_SCALE = 7.0

# Extra pronunciations (ARPAbet) added to the shipped CMU dictionary. Measured: the British
# "stop" vowel keeps espeak's en-gb voices from hearing "go up"; the non-rhotic variants
# of "lower"/"higher" etc. were tried too and made things worse, so they are not here.
_EXTRA_PRONUNCIATIONS: dict[str, tuple[str, ...]] = {"stop": ("S T AO P",)}

# Wider beams for the fallback pass (defaults: beam 1e-48, pbeam 1e-48, wbeam 7e-29).
_WIDE_BEAMS = {"beam": 1e-60, "pbeam": 1e-60, "wbeam": 1e-40}

# Shorter than this (after trimming) is not speech: 80 ms.
_MIN_SPEECH_SAMPLES = SAMPLE_RATE * 80 // 1000

_FILLER_WORDS = {"<s>", "</s>", "<sil>", "(NULL)", "[NOISE]", "[SPEECH]", "++NOISE++"}


def pocketsphinx_available() -> bool:
    """True when the ``pocketsphinx`` package (with its bundled model) can be imported."""
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        return False
    return True


def _import_pocketsphinx():
    try:
        import pocketsphinx
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "speech recognition needs the 'pocketsphinx' package (pip install 'pocketsphinx>=5.0'); "
            "its wheel ships the English acoustic model and dictionary"
        ) from e
    return pocketsphinx


# ---------------------------------------------------------------------------------------------
# Audio input
# ---------------------------------------------------------------------------------------------

def to_pcm16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Any rate, any channels (``(n,)`` or ``(n, channels)``), int or float -> int16 mono 16 kHz.

    Float input is taken to be in [-1, 1]; integer input is scaled by its type's range.
    Resampling uses ``scipy.signal.resample_poly`` (polyphase, anti-aliased) when SciPy is
    installed, else linear interpolation.
    """
    x = np.asarray(samples)
    if x.ndim not in (1, 2):
        raise ValueError(f"audio must be (n,) or (n, channels), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        if info.min == 0:  # unsigned (8-bit WAV): centre it
            xf = (x.astype(np.float64) - (info.max + 1) / 2) / ((info.max + 1) / 2) * 32768.0
        else:
            xf = x.astype(np.float64) * (32768.0 / (info.max + 1))
    else:
        xf = x.astype(np.float64) * 32768.0
    if xf.ndim == 2:  # down-mix after scaling, so the sample type is still known
        xf = xf.mean(axis=1)
    if sample_rate != SAMPLE_RATE and len(xf):
        xf = _resample(xf, int(sample_rate), SAMPLE_RATE)
    return np.clip(np.round(xf), -32768, 32767).astype(np.int16)


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src <= 0:
        raise ValueError(f"sample rate must be positive, got {src}")
    try:
        from scipy.signal import resample_poly
    except ImportError:
        n_out = int(round(len(x) * dst / src))
        t_out = np.arange(n_out) * (src / dst)
        return np.interp(t_out, np.arange(len(x)), x)
    g = math.gcd(src, dst)
    return resample_poly(x, dst // g, src // g)


def load_wav(path: str | os.PathLike) -> np.ndarray:
    """Read a WAV file and return int16 mono 16 kHz samples (see :func:`to_pcm16k`).

    PCM 8/16/24/32-bit is read with the standard library; float WAVs (and anything else)
    through SciPy's reader when it is installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such audio file: {path}")
    try:
        with wave.open(str(path), "rb") as w:
            rate, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
    except wave.Error:
        try:
            from scipy.io import wavfile
        except ImportError:
            raise ValueError(f"{path}: not a PCM WAV file, and SciPy (for float WAVs) is not installed") from None
        rate, data = wavfile.read(str(path))
        return to_pcm16k(data, rate)
    if width == 1:
        data = np.frombuffer(raw, np.uint8)
    elif width == 2:
        data = np.frombuffer(raw, "<i2")
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        data = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8)
                | (b[:, 2].astype(np.int8).astype(np.int32) << 16)) << 8
    elif width == 4:
        data = np.frombuffer(raw, "<i4")
    else:
        raise ValueError(f"{path}: unsupported sample width {width} bytes")
    data = data.reshape(-1, ch) if ch > 1 else data
    return to_pcm16k(data, rate)


# ---------------------------------------------------------------------------------------------
# Grammar
# ---------------------------------------------------------------------------------------------

def grammar_text(instructions: Sequence[str] = INSTRUCTIONS, weights: dict[str, float] | None = None,
                 name: str = "commands") -> str:
    """A JSGF grammar accepting exactly one of ``instructions`` (optionally weighted)."""
    alts = []
    for s in instructions:
        words = s.lower().split()
        if not words or not all(w.replace("'", "").isalpha() for w in words):
            raise ValueError(f"instruction {s!r} must be lower-case words (letters and apostrophes)")
        prefix = f"/{float(weights.get(s, 1.0)):.1f}/ " if weights else ""
        alts.append(f"{prefix}( {' '.join(words)} )")
    body = "\n    | ".join(alts)
    return f"#JSGF V1.0;\n\ngrammar {name};\n\npublic <command> =\n      {body}\n    ;\n"


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recognition:
    """One recognised utterance.

    Attributes:
        text: the words recognised (a canonical instruction, or ``""`` when nothing was).
        confidence: in [0, 1]; see the module docstring for what it means.
        latency_ms: from the whole utterance being available to this result.
        command: the parsed :class:`~serl_ctrl.language.vocabulary.Command`, or ``None`` when
            nothing was recognised or the confidence is below the recogniser's threshold.
        score_per_frame: the raw per-frame score behind ``confidence`` (log base 1.0001).
        duration_s: length of the audio that was decoded (before padding).
        fallback: True when the wide-beam second pass produced the result.
    """

    text: str
    confidence: float
    latency_ms: float
    command: Command | None
    score_per_frame: float | None = None
    duration_s: float = 0.0
    fallback: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "text": self.text,
            "command": self.command.to_dict() if self.command is not None else None,
            "confidence": round(float(self.confidence), 4),
            "latency_ms": round(float(self.latency_ms), 2),
            "score_per_frame": None if self.score_per_frame is None else round(float(self.score_per_frame), 2),
            "duration_s": round(float(self.duration_s), 3),
            "fallback": self.fallback,
        }


# ---------------------------------------------------------------------------------------------
# Recogniser
# ---------------------------------------------------------------------------------------------

class Recognizer:
    """Grammar-constrained pocketsphinx recogniser for the command vocabulary.

    Args:
        instructions: the sentences to recognise (default: every canonical instruction).
        stop_weight: grammar weight of ``"stop"`` relative to 1 for the others (priority).
        min_confidence: below this, ``Recognition.command`` is ``None`` ("stop" excepted).
        pad_ms: silence added before and after the trimmed utterance.
        noise_std: standard deviation (16-bit units) of the Gaussian noise mixed in.
        trim_threshold: samples with ``|x| <=`` this at both ends are trimmed first.
        fallback: decode again with wider beams when the first pass ends with no sentence.
        reset_frontend: reset the feature front end (noise tracker, cepstral mean) before every
            utterance, so that a result does not depend on the utterances decoded before
            (pocketsphinx carries that state over; with the reset, results are deterministic).
        builtin_pronunciations: add the extra pronunciations tuned here (``stop`` as S T AO P).
        pronunciations: extra ``{word: [ARPAbet, ...]}`` for words missing from, or to add
            variants to, the shipped dictionary.
        decoder_options: extra pocketsphinx ``Config`` options (``{"beam": 1e-50}``…).

    A Recognizer is not thread-safe (a lock serialises calls). Close it (or use it as a
    context manager) to delete its temporary grammar file; it is also removed at exit.
    """

    def __init__(
        self,
        instructions: Sequence[str] = INSTRUCTIONS,
        *,
        stop_weight: float = 1e6,
        min_confidence: float = 0.15,
        pad_ms: float = 200.0,
        noise_std: float = 150.0,
        trim_threshold: int = 64,
        fallback: bool = True,
        reset_frontend: bool = True,
        builtin_pronunciations: bool = True,
        pronunciations: dict[str, Sequence[str]] | None = None,
        decoder_options: dict[str, Any] | None = None,
    ) -> None:
        ps = _import_pocketsphinx()
        self.instructions = list(instructions)
        if not self.instructions:
            raise ValueError("instructions must not be empty")
        self.min_confidence = float(min_confidence)
        self.pad_ms = float(pad_ms)
        self.noise_std = float(noise_std)
        self.trim_threshold = int(trim_threshold)
        self.use_fallback = bool(fallback)
        weights = {"stop": float(stop_weight)} if "stop" in self.instructions and stop_weight != 1 else None
        self.grammar = grammar_text(self.instructions, weights)
        self._tmpdir = tempfile.mkdtemp(prefix="serl_ctrl_grammar_")
        atexit.register(shutil.rmtree, self._tmpdir, True)
        self.grammar_path = os.path.join(self._tmpdir, "commands.gram")
        with open(self.grammar_path, "w", encoding="utf-8") as f:
            f.write(self.grammar)
        self._bootstrap_path = os.path.join(self._tmpdir, "bootstrap.gram")
        with open(self._bootstrap_path, "w", encoding="utf-8") as f:
            f.write("#JSGF V1.0;\ngrammar bootstrap;\npublic <w> = the;\n")
        self.reset_frontend = bool(reset_frontend)
        prons = {k: tuple(v) for k, v in _EXTRA_PRONUNCIATIONS.items()} if builtin_pronunciations else {}
        for k, v in (pronunciations or {}).items():
            prons[k.lower()] = prons.get(k.lower(), ()) + tuple(v)
        self._prons = prons
        self._options = dict(decoder_options or {})
        self._ps = ps
        self._lock = threading.Lock()
        self._decoder = self._make_decoder({})
        # Built up front so that a fallback does not pay for loading the model (~0.3 s).
        self._wide: Any = self._make_decoder(_WIDE_BEAMS) if self.use_fallback else None
        self._logmath = self._decoder.get_logmath()
        self._cmn0 = self._decoder.get_cmn()

    # -- set-up ----------------------------------------------------------------------------

    def _make_decoder(self, beams: dict[str, float]):
        ps = self._ps
        # dither off: the conditioning adds its own (seeded) noise, so results are deterministic.
        cfg = dict(loglevel="FATAL", dither=False, bestpath=False, samprate=SAMPLE_RATE)
        cfg.update(self._options)
        cfg.update(beams)
        # A one-word bootstrap grammar as the initial search, so that the 27 MB n-gram LM is never
        # loaded and unknown words can be reported before the real grammar is built.
        dec = ps.Decoder(jsgf=self._bootstrap_path, **cfg)
        missing = sorted({w for s in self.instructions for w in s.split()
                          if dec.lookup_word(w) is None and w not in self._prons})
        if missing:
            raise ValueError(
                f"words not in the pronunciation dictionary: {missing}; pass pronunciations="
                "{word: ['ARPAbet phones']} to Recognizer")
        for word, variants in self._prons.items():
            existing = dec.lookup_word(word) is not None
            k = 2
            for phones in variants:
                if not existing:
                    dec.add_word(word, phones, update=True)
                    existing = True
                    continue
                while dec.lookup_word(f"{word}({k})") is not None:
                    k += 1
                dec.add_word(f"{word}({k})", phones, update=True)
        dec.add_jsgf_file("commands", self.grammar_path)
        dec.activate_search("commands")
        return dec

    def close(self) -> None:
        """Delete the temporary grammar directory."""
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> "Recognizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- decoding --------------------------------------------------------------------------

    def _trim(self, audio: np.ndarray) -> np.ndarray:
        x = np.asarray(audio)
        if x.dtype != np.int16:
            raise TypeError(f"audio must be int16 at {SAMPLE_RATE} Hz (use to_pcm16k), got {x.dtype}")
        if x.ndim != 1:
            raise ValueError(f"audio must be mono (n,), got shape {x.shape}")
        idx = np.flatnonzero(np.abs(x.astype(np.int32)) > self.trim_threshold)
        return x[idx[0]: idx[-1] + 1] if len(idx) else x[:0]

    def condition(self, audio: np.ndarray) -> np.ndarray:
        """Trim, pad and dither an int16 16 kHz utterance the way the decoder was tuned for."""
        x = self._trim(audio)
        pad = np.zeros(int(SAMPLE_RATE * self.pad_ms / 1000.0))
        y = np.concatenate([pad, x.astype(np.float64), pad])
        if self.noise_std > 0:
            y += np.random.default_rng(0).normal(0.0, self.noise_std, y.shape)
        return np.clip(np.round(y), -32768, 32767).astype(np.int16)

    def _decode(self, dec, pcm: bytes):
        if self.reset_frontend:
            dec.reinit_feat()
            dec.set_cmn(self._cmn0)
        dec.start_utt()
        dec.process_raw(pcm, full_utt=True)
        dec.end_utt()
        hyp = dec.hyp()
        if hyp is None or not hyp.hypstr:
            return None
        segs = [s for s in dec.seg() if s.word not in _FILLER_WORDS]
        frames = sum(max(s.end_frame - s.start_frame + 1, 0) for s in segs)
        score = self._logmath.log(hyp.score) if hyp.score > 0 else -1e9
        return hyp.hypstr, score / max(frames, 1)

    def recognize(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Recognition:
        """Recognise one utterance (int16 mono; another rate or dtype is converted first).

        ``latency_ms`` counts from this call (the whole utterance is available) to the result,
        conversion included.
        """
        t0 = time.perf_counter()
        a = np.asarray(audio)
        if a.dtype != np.int16 or sample_rate != SAMPLE_RATE or a.ndim != 1:
            a = to_pcm16k(a, sample_rate)
        duration = len(a) / SAMPLE_RATE
        if len(self._trim(a)) < _MIN_SPEECH_SAMPLES:
            # Nothing above the trim threshold (silence): nothing to decode.
            return Recognition("", 0.0, (time.perf_counter() - t0) * 1000.0, None, None, duration, False)
        pcm = self.condition(a).tobytes()
        with self._lock:
            out = self._decode(self._decoder, pcm)
            used_fallback = False
            if out is None and self._wide is not None:
                out = self._decode(self._wide, pcm)
                used_fallback = out is not None
        if out is None:
            return Recognition("", 0.0, (time.perf_counter() - t0) * 1000.0, None, None, duration, False)
        text, per_frame = out
        conf = 1.0 / (1.0 + math.exp(-(per_frame - CONFIDENCE_MID) / CONFIDENCE_SCALE))
        cmd = parse(text)
        if cmd is not None and cmd.kind != "stop" and conf < self.min_confidence:
            cmd = None
        latency = (time.perf_counter() - t0) * 1000.0
        return Recognition(text, conf, latency, cmd, per_frame, duration, used_fallback)

    def recognize_file(self, path: str | os.PathLike) -> Recognition:
        """Recognise a WAV file (any rate and channel count). Latency excludes reading the file."""
        return self.recognize(load_wav(path))

    # -- live input ------------------------------------------------------------------------

    def stream(self, **endpointer_options: Any) -> "UtteranceStream":
        """An :class:`UtteranceStream` fed with 16 kHz int16 chunks (e.g. from a microphone)."""
        return UtteranceStream(self, **endpointer_options)

    def listen(self, device: int | str | None = None, *, block_ms: float = 30.0,
               max_seconds: float | None = None,
               on_result: Callable[[Recognition], None] | None = None,
               **endpointer_options: Any) -> Iterator[Recognition]:
        """Recognise utterances from a microphone (needs ``sounddevice`` and PortAudio).

        Yields one :class:`Recognition` per utterance the endpointer finds, until
        ``max_seconds`` (``None``: forever; stop iterating to end it).
        """
        sd = _import_sounddevice()
        stream = self.stream(**endpointer_options)
        dev_rate = SAMPLE_RATE
        try:
            sd.check_input_settings(device=device, channels=1, dtype="int16", samplerate=SAMPLE_RATE)
        except Exception:
            dev_rate = int(sd.query_devices(device, "input")["default_samplerate"])
        block = max(int(dev_rate * block_ms / 1000.0), 1)
        t_end = None if max_seconds is None else time.monotonic() + max_seconds
        with sd.InputStream(device=device, channels=1, dtype="int16", samplerate=dev_rate,
                            blocksize=block) as mic:
            while t_end is None or time.monotonic() < t_end:
                data, _overflow = mic.read(block)
                chunk = data[:, 0] if data.ndim == 2 else data
                if dev_rate != SAMPLE_RATE:
                    chunk = to_pcm16k(chunk, dev_rate)
                for r in stream.feed(chunk):
                    if on_result is not None:
                        on_result(r)
                    yield r
        for r in stream.flush():
            yield r


def _import_sounddevice():
    try:
        import sounddevice as sd
    except ImportError as e:
        raise RuntimeError(
            "microphone input needs the 'sounddevice' package (pip install sounddevice); "
            "use Recognizer.recognize_file() for WAV files") from e
    except OSError as e:  # sounddevice is installed but the PortAudio library is not
        raise RuntimeError(
            f"microphone input needs the PortAudio library ({e}); on Debian/Ubuntu: "
            "apt-get install libportaudio2") from e
    return sd


class UtteranceStream:
    """Cuts a stream of 16 kHz int16 audio into utterances with pocketsphinx's ``Endpointer``.

    :meth:`feed` takes chunks of any length and returns the :class:`Recognition` of every
    utterance that ended in them. ``latency_ms`` of each counts from the moment the endpointer
    declared the end of speech (the chunk that closed the utterance was fed) to the result;
    the endpointer itself needs ``window * ratio`` seconds of non-speech (0.27 s by default)
    before it declares that end, which a live user also waits for.

    Args:
        window, ratio, vad_mode: passed to ``pocketsphinx.Endpointer`` (``vad_mode`` 0-3,
            higher is more aggressive about calling audio non-speech).
        max_utterance_s: an utterance longer than this is cut and decoded.
    """

    def __init__(self, recognizer: Recognizer, *, window: float = 0.3, ratio: float = 0.9,
                 vad_mode: int = 0, max_utterance_s: float = 6.0) -> None:
        ps = _import_pocketsphinx()
        self.recognizer = recognizer
        self.endpointer = ps.Endpointer(window=window, ratio=ratio, vad_mode=vad_mode,
                                        sample_rate=SAMPLE_RATE)
        self._frame_samples = self.endpointer.frame_bytes // 2
        self._pending = np.zeros(0, np.int16)
        self._speech: list[bytes] = []
        self._max_bytes = int(max_utterance_s * SAMPLE_RATE) * 2

    @property
    def in_speech(self) -> bool:
        return bool(self.endpointer.in_speech)

    def feed(self, chunk: np.ndarray) -> list[Recognition]:
        x = np.asarray(chunk)
        if x.dtype != np.int16 or x.ndim != 1:
            raise TypeError(f"chunks must be int16 mono at {SAMPLE_RATE} Hz; use to_pcm16k()")
        buf = np.concatenate([self._pending, x])
        n = len(buf) // self._frame_samples * self._frame_samples
        self._pending = buf[n:]
        out: list[Recognition] = []
        for i in range(0, n, self._frame_samples):
            frame = buf[i: i + self._frame_samples].tobytes()
            was_in = self.endpointer.in_speech
            speech = self.endpointer.process(frame)
            if speech is not None:
                self._speech.append(speech)
            ended = was_in and not self.endpointer.in_speech
            if ended or sum(map(len, self._speech)) >= self._max_bytes:
                r = self._finish()
                if r is not None:
                    out.append(r)
        return out

    def flush(self) -> list[Recognition]:
        """End of the input: decode what is left of an utterance in progress."""
        if self.endpointer.in_speech:
            tail = self.endpointer.end_stream(self._pending.tobytes())
            if tail is not None:
                self._speech.append(tail)
        self._pending = np.zeros(0, np.int16)
        r = self._finish()
        return [r] if r is not None else []

    def _finish(self) -> Recognition | None:
        if not self._speech:
            return None
        audio = np.frombuffer(b"".join(self._speech), np.int16)
        self._speech = []
        return self.recognizer.recognize(audio)


def espeak_binary() -> str | None:
    """Path of ``espeak-ng`` (or ``espeak``), or None. Used by the tests and the benchmark."""
    return shutil.which("espeak-ng") or shutil.which("espeak")


def synthesize(text: str, path: str | os.PathLike, voice: str = "en-us", speed: int = 160) -> Path:
    """Speak ``text`` into a WAV file with espeak-ng (22.05 kHz mono); for tests and demos.

    The text is passed as one argument (no shell), never interpreted.
    """
    import subprocess

    exe = espeak_binary()
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    path = Path(path)
    subprocess.run([exe, "-v", voice, "-s", str(int(speed)), "-w", str(path), "--stdin"],
                   input=text.encode("utf-8"), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def recognize_many(recognizer: Recognizer, items: Iterable[np.ndarray]) -> list[Recognition]:
    """Convenience: recognise several 16 kHz int16 utterances."""
    return [recognizer.recognize(a) for a in items]
