"""Offline speech recognition (serl_ctrl.language.speech, serl_ctrl.language.correct).

Utterances are synthesised with espeak-ng in several voices and speeds; the tests skip (saying
why) when espeak-ng or pocketsphinx is absent. The accuracy thresholds here are looser than
the goal measured by bench/bench_speech.py, so a one-utterance fluke does not fail CI.
"""

from __future__ import annotations

import json
import statistics
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from serl_ctrl.language import speech
from serl_ctrl.language.speech import SAMPLE_RATE, grammar_text, load_wav, to_pcm16k
from serl_ctrl.language.vocabulary import INSTRUCTIONS

needs_pocketsphinx = pytest.mark.skipif(not speech.pocketsphinx_available(),
                                        reason="pocketsphinx is not installed (pip install pocketsphinx)")
needs_espeak = pytest.mark.skipif(speech.espeak_binary() is None,
                                  reason="espeak-ng binary not found (apt-get install espeak-ng)")

# (voice, words per minute): male/female, US/UK, slow/normal/fast.
GRID = [("en-us", 160), ("en-gb", 130), ("en+m3", 190), ("en+f3", 160)]


@pytest.fixture(scope="module")
def recognizer():
    if not speech.pocketsphinx_available():
        pytest.skip("pocketsphinx is not installed (pip install pocketsphinx)")
    rec = speech.Recognizer()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def wav_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("speech_wavs")


def _say(wav_dir: Path, text: str, voice: str, speed: int) -> Path:
    path = wav_dir / f"{voice.replace('+', '_')}_{speed}_{text.replace(' ', '_')}.wav"
    if not path.exists():
        speech.synthesize(text, path, voice=voice, speed=speed)
    return path


def _write_wav(path: Path, data: np.ndarray, rate: int, width: int = 2) -> None:
    data = np.asarray(data)
    ch = 1 if data.ndim == 1 else data.shape[1]
    if width == 2:
        raw = data.astype("<i2").tobytes()
    elif width == 3:
        v = data.astype(np.int32).reshape(-1)
        raw = np.stack([(v >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8).tobytes()
    else:
        raise ValueError(width)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(ch)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


# ------------------------------------------------------------------ audio conversion


def test_to_pcm16k_float_stereo_44k():
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    out = to_pcm16k(np.stack([tone, tone], axis=1).astype(np.float32), 44100)
    assert out.dtype == np.int16 and out.ndim == 1
    assert abs(len(out) - SAMPLE_RATE) <= 1
    spectrum = np.abs(np.fft.rfft(out.astype(float)))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(out) - 440) < 2
    assert 0.45 * 32768 < np.abs(out).max() < 0.55 * 32768


def test_to_pcm16k_integer_types():
    assert to_pcm16k(np.array([0, 16384, -32768], np.int16), SAMPLE_RATE).tolist() == [0, 16384, -32768]
    u8 = to_pcm16k(np.array([128, 255, 0], np.uint8), SAMPLE_RATE)
    assert u8[0] == 0 and u8[1] > 32000 and u8[2] == -32768
    i32 = to_pcm16k(np.array([1 << 30], np.int32), SAMPLE_RATE)
    assert i32[0] == 16384
    with pytest.raises(ValueError):
        to_pcm16k(np.zeros((2, 2, 2)), SAMPLE_RATE)


def test_load_wav_any_rate_channels_and_width(tmp_path):
    t = np.arange(8000) / 8000
    tone = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    _write_wav(tmp_path / "a.wav", np.stack([tone, tone], 1), 8000)
    a = load_wav(tmp_path / "a.wav")
    assert a.dtype == np.int16 and abs(len(a) - SAMPLE_RATE) <= 1
    _write_wav(tmp_path / "b.wav", tone.astype(np.int32) << 8, 8000, width=3)
    b = load_wav(tmp_path / "b.wav")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    with pytest.raises(FileNotFoundError):
        load_wav(tmp_path / "missing.wav")


def test_load_float_wav(tmp_path):
    wavfile = pytest.importorskip("scipy.io.wavfile")
    x = (0.25 * np.sin(2 * np.pi * 200 * np.arange(48000) / 48000)).astype(np.float32)
    wavfile.write(tmp_path / "f.wav", 48000, x)
    a = load_wav(tmp_path / "f.wav")
    assert abs(len(a) - SAMPLE_RATE) <= 1 and 0.2 * 32768 < np.abs(a).max() < 0.3 * 32768


# ------------------------------------------------------------------ grammar and set-up


def test_grammar_text():
    g = grammar_text(INSTRUCTIONS, {"stop": 1e6})
    assert g.startswith("#JSGF V1.0;")
    for s in INSTRUCTIONS:
        assert f"( {s} )" in g
    assert "/1000000.0/ ( stop )" in g
    with pytest.raises(ValueError):
        grammar_text(["move 3 cm left"])


@needs_pocketsphinx
def test_grammar_file_lives_in_a_temp_dir_and_is_removed():
    rec = speech.Recognizer(["stop", "go up"])
    path = Path(rec.grammar_path)
    assert path.is_file() and path.read_text() == rec.grammar
    rec.close()
    assert not path.exists()


@needs_pocketsphinx
def test_unknown_words_are_reported():
    with pytest.raises(ValueError, match="frobnicate"):
        speech.Recognizer(["frobnicate the widget"])
    rec = speech.Recognizer(["frobnicate"], pronunciations={"frobnicate": ["F R AA B N IH K EY T"]})
    rec.close()


@needs_pocketsphinx
def test_silence_and_noise_change_nothing(recognizer):
    r = recognizer.recognize(np.zeros(SAMPLE_RATE, np.int16))
    assert r.text == "" and r.command is None and r.confidence == 0.0
    r = recognizer.recognize(np.zeros(0, np.int16))
    assert r.command is None
    with pytest.raises(TypeError):
        recognizer.condition(np.zeros(10, np.float32))


# ------------------------------------------------------------------ recognition of synthetic speech


@needs_pocketsphinx
@needs_espeak
def test_recognises_the_vocabulary_in_several_voices_and_speeds(recognizer, wav_dir):
    results = {}
    for voice, speed in GRID:
        for text in INSTRUCTIONS:
            r = recognizer.recognize_file(_say(wav_dir, text, voice, speed))
            results[(voice, speed, text)] = r
    exact = [r.text == k[2] for k, r in results.items()]
    wrong = [(k, r.text) for k, r in results.items() if r.text != k[2]]
    assert np.mean(exact) >= 0.90, f"exact-match {np.mean(exact):.2%}; wrong: {wrong}"
    for voice, speed in GRID:
        per_voice = [results[(voice, speed, t)].text == t for t in INSTRUCTIONS]
        assert np.mean(per_voice) >= 0.80, (voice, speed, wrong)
    # A recognised command is the parse of the recognised words.
    for (voice, speed, text), r in results.items():
        if r.text == text:
            assert r.command is not None and r.command.instruction == text or r.confidence < recognizer.min_confidence
        assert 0.0 <= r.confidence <= 1.0 and r.latency_ms > 0
    latencies = [r.latency_ms for r in results.values()]
    assert statistics.median(latencies) < 500, "decoding is far slower than it should be"


@needs_pocketsphinx
@needs_espeak
@pytest.mark.parametrize("voice, speed", GRID + [("en-gb-scotland", 175), ("en+f2", 145)])
def test_stop_has_priority(recognizer, wav_dir, voice, speed):
    r = recognizer.recognize_file(_say(wav_dir, "stop", voice, speed))
    assert r.text == "stop" and r.command is not None and r.command.kind == "stop"


@needs_pocketsphinx
@needs_espeak
def test_no_false_stops(recognizer, wav_dir):
    voice, speed = "en-us", 160
    for text in INSTRUCTIONS:
        if text != "stop":
            assert recognizer.recognize_file(_say(wav_dir, text, voice, speed)).text != "stop", text


@needs_pocketsphinx
@needs_espeak
def test_any_rate_and_channels_give_the_same_words(recognizer, wav_dir, tmp_path):
    src = _say(wav_dir, "close the gripper", "en-us", 160)
    with wave.open(str(src)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    from serl_ctrl.language.speech import _resample

    y = np.clip(_resample(x.astype(float), rate, 48000), -32768, 32767).astype(np.int16)
    _write_wav(tmp_path / "stereo48k.wav", np.stack([y, y], 1), 48000)
    assert recognizer.recognize_file(src).text == "close the gripper"
    assert recognizer.recognize_file(tmp_path / "stereo48k.wav").text == "close the gripper"
    # Deterministic: same audio, same result.
    a = recognizer.recognize_file(src)
    b = recognizer.recognize_file(src)
    assert (a.text, a.confidence) == (b.text, b.confidence)


@needs_pocketsphinx
@needs_espeak
def test_confidence_is_lower_for_sentences_outside_the_vocabulary(recognizer, wav_dir):
    inside = ["open the gripper", "go down", "move a bit to the left", "insert the peg", "lift"]
    outside = ["what time is it", "the weather is nice today", "turn on the kitchen lights",
               "I would like a cup of tea", "banana"]
    cin = [recognizer.recognize_file(_say(wav_dir, t, "en-us", 160)).confidence for t in inside]
    cout = [recognizer.recognize_file(_say(wav_dir, t, "en-us", 160)).confidence for t in outside]
    assert np.mean(cin) > 0.6 and np.mean(cin) > np.mean(cout) + 0.3, (cin, cout)


@needs_pocketsphinx
@needs_espeak
def test_streaming_endpointer_finds_each_utterance(recognizer, wav_dir):
    a = load_wav(_say(wav_dir, "go down", "en-gb", 160))
    b = load_wav(_say(wav_dir, "open the gripper", "en-us", 160))
    rng = np.random.default_rng(0)
    sil = lambda s: np.zeros(int(s * SAMPLE_RATE), np.int16)  # noqa: E731
    sig = np.concatenate([sil(0.5), a, sil(0.8), b, sil(0.8)]).astype(np.float64)
    sig = np.clip(sig + rng.normal(0, 20, sig.shape), -32768, 32767).astype(np.int16)
    stream = recognizer.stream()
    got = []
    for i in range(0, len(sig), 480):  # 30 ms chunks, as a microphone would deliver them
        got += stream.feed(sig[i: i + 480])
    got += stream.flush()
    assert [r.text for r in got] == ["go down", "open the gripper"]
    assert all(r.latency_ms > 0 for r in got)


def test_microphone_without_sounddevice_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(RuntimeError, match="sounddevice"):
        speech._import_sounddevice()


# ------------------------------------------------------------------ correct.py


@needs_pocketsphinx
@needs_espeak
def test_correct_wav_returns_a_json_dict(recognizer, wav_dir):
    from serl_ctrl.language.correct import correct_wav

    out = correct_wav(_say(wav_dir, "move a bit to the left", "en-us", 160), recognizer=recognizer)
    assert set(out) == {"text", "command", "confidence", "latency_ms"}
    assert json.loads(json.dumps(out)) == out
    assert out["text"] == "move a bit to the left"
    assert out["command"]["kind"] == "translate"
    assert out["command"]["parameters"] == {"direction": [0.0, 1.0, 0.0], "magnitude_m": 0.02}


def test_correct_text_and_cli(capsys):
    from serl_ctrl.language.correct import correct_text, main

    assert correct_text("sing a song")["command"] is None
    assert main(["--text", "raise it a bit", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["command"]["instruction"] == "a little higher"
    assert main(["--wav", "/nonexistent/file.wav", "--json"]) == 2


@needs_pocketsphinx
@needs_espeak
def test_listen_reads_the_microphone_through_sounddevice(recognizer, wav_dir, monkeypatch):
    """listen() with a stand-in sounddevice module whose device only does 48 kHz."""
    import types

    a = load_wav(_say(wav_dir, "go up", "en-us", 160)).astype(np.float64)
    from serl_ctrl.language.speech import _resample

    sig = np.concatenate([np.zeros(8000), a, np.zeros(16000)])
    sig = _resample(sig, SAMPLE_RATE, 48000) + np.random.default_rng(0).normal(0, 20, int(len(sig) * 3))
    sig = np.clip(sig, -32768, 32767).astype(np.int16)

    class FakeStream:
        def __init__(self, **kw):
            assert kw["samplerate"] == 48000 and kw["dtype"] == "int16" and kw["channels"] == 1
            self.pos = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            chunk = sig[self.pos: self.pos + n]
            self.pos += n
            if len(chunk) < n:
                chunk = np.concatenate([chunk, np.zeros(n - len(chunk), np.int16)])
            return chunk.reshape(-1, 1), False

    def check_input_settings(**kw):
        if kw.get("samplerate") != 48000:
            raise ValueError("invalid sample rate")

    fake = types.SimpleNamespace(
        InputStream=FakeStream, check_input_settings=check_input_settings,
        query_devices=lambda device, kind: {"default_samplerate": 48000.0})
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    got = []
    for r in recognizer.listen(max_seconds=5.0):
        got.append(r)
        break
    assert [r.text for r in got] == ["go up"]
