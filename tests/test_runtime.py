"""The policy runtime: ONNX export, parity, the onnxruntime backend, chunk queues, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from serl_ctrl.export.onnx_export import export_onnx, write_card
from serl_ctrl.runtime import load_policy
from serl_ctrl.runtime.onnx_policy import OnnxPolicy
from serl_ctrl.runtime.spec import ObsField, PolicySpec
from serl_ctrl.runtime.torch_policy import TorchPolicy


class ChunkNet(torch.nn.Module):
    """A small policy: state + image in, a chunk of ``horizon`` actions out (in [-1, 1])."""

    def __init__(self, horizon: int = 1, act_dim: int = 4) -> None:
        super().__init__()
        self.horizon, self.act_dim = horizon, act_dim
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(7 + 4, 32), torch.nn.LayerNorm(32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, horizon * act_dim))

    def forward(self, obs):
        img = obs["cam"].permute(0, 3, 1, 2).float() / 255.0
        feat = self.conv(img).mean(dim=(2, 3))
        out = torch.tanh(self.mlp(torch.cat([obs["state"], feat], dim=-1)))
        return out.reshape(-1, self.horizon, self.act_dim) if self.horizon > 1 else out


def make_spec(horizon: int = 1, n_action_steps: int = 1) -> PolicySpec:
    return PolicySpec(obs={"state": ObsField((7,)), "cam": ObsField((16, 16, 3), "uint8")}, action_dim=4,
                      action_low=(-1.0,) * 4, action_high=(1.0,) * 4, algo="test", horizon=horizon,
                      n_action_steps=n_action_steps)


def obs_sample(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=7).astype(np.float32), "cam": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    net = ChunkNet()
    path = tmp_path_factory.mktemp("policy") / "net.onnx"
    report = export_onnx(net, make_spec(), path)
    write_card(path, algo="test", success_rate=None)
    return net, path, report


def test_export_parity_and_metadata(exported):
    net, path, report = exported
    assert report.parity_max_abs_diff <= 1e-5 and report.parity_samples == 16
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    spec = PolicySpec.from_json(meta["serl_ctrl"])
    assert spec == make_spec()
    assert not list(path.parent.glob("*.data")), "the model must be one file"
    policy = OnnxPolicy(path)
    torch_policy = TorchPolicy(net, make_spec())
    for seed in range(5):
        np.testing.assert_allclose(policy.act(obs_sample(seed)), torch_policy.act(obs_sample(seed)), atol=1e-5)


def test_bad_observations_name_the_key(exported):
    policy = OnnxPolicy(exported[1])
    obs = obs_sample()
    with pytest.raises(ValueError, match="missing key 'cam'"):
        policy.act({"state": obs["state"]})
    with pytest.raises(ValueError, match=r"'state' has shape \(6,\)"):
        policy.act({**obs, "state": obs["state"][:6]})
    with pytest.raises(ValueError, match="'cam' must be uint8"):
        policy.act({**obs, "cam": obs["cam"].astype(np.float32)})
    with pytest.raises(ValueError, match="'state' contains NaN"):
        policy.act({**obs, "state": np.full(7, np.nan, np.float32)})


def test_bad_files_fail_at_load(exported, tmp_path):
    _, path, _ = exported
    with pytest.raises(FileNotFoundError, match="nope"):
        load_policy(tmp_path / "nope.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match="truncated.onnx"):
        OnnxPolicy(truncated)
    # Tampered: the bytes change, the card keeps the old sha256.
    tampered = tmp_path / "tampered.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    tampered.write_bytes(bytes(data))
    (tmp_path / "tampered.json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(ValueError, match="does not match its model card"):
        OnnxPolicy(tampered)


def test_unsupported_schema_version(exported, tmp_path):
    import onnx

    model = onnx.load(str(exported[1]))
    for p in model.metadata_props:
        if p.key == "serl_ctrl":
            d = json.loads(p.value)
            d["schema_version"] = 99
            p.value = json.dumps(d)
    future = tmp_path / "future.onnx"
    onnx.save(model, str(future))
    with pytest.raises(ValueError, match="schema version 99 is not supported"):
        OnnxPolicy(future)


@pytest.mark.parametrize("noise_inputs, sampler, message", [
    ({"state": (8, 4)}, False, r"noise_inputs: input name 'state'"),
    ({"noise_0": (8, 0)}, False, r"noise_inputs: shape of 'noise_0'"),
    ({"noise_0": [8, 4]}, False, r"noise_inputs: shape of 'noise_0'"),
    ({"noise_0": (8.0, 4)}, False, r"noise_inputs: shape of 'noise_0'"),
    ({"noise_0": (8, 4)}, True, r"noise_inputs: a runtime-sampler graph"),
])
def test_bad_noise_inputs_are_rejected_naming_the_field(noise_inputs, sampler, message):
    from serl_ctrl.runtime.spec import SamplerSpec

    ddim = SamplerSpec(timesteps=(9,), alphas_cumprod=(0.5,), prediction_type="epsilon", clip_sample=True,
                       action_scale=(1.0,) * 4, action_offset=(0.0,) * 4) if sampler else None
    with pytest.raises(ValueError, match=message):
        PolicySpec(**{**make_spec(horizon=8).__dict__, "noise_inputs": noise_inputs, "sampler": ddim})


def test_noise_inputs_round_trip_and_bad_json_names_the_field():
    spec = PolicySpec(**{**make_spec(horizon=8).__dict__, "noise_inputs": {"noise_0": (8, 4)}})
    assert spec.graph_inputs()["noise_0"] == ((1, 8, 4), "float32")
    assert list(spec.graph_inputs()) == ["state", "cam", "noise_0"]
    assert PolicySpec.from_json(spec.to_json()) == spec
    assert "noise_inputs" not in json.loads(make_spec().to_json())  # only files that take noise carry it
    d = json.loads(spec.to_json())
    for bad, message in [({"noise_0": 8}, "noise_inputs must map input names to shape lists"),
                         ({"noise_0": [8, -1]}, "noise_inputs: shape of 'noise_0'")]:
        with pytest.raises(ValueError, match=f"p.onnx: malformed policy spec \\({message}"):
            PolicySpec.from_json(json.dumps({**d, "noise_inputs": bad}), where="p.onnx")
    with pytest.raises(ValueError, match="a version 2 spec has no noise_inputs"):
        PolicySpec.from_json(json.dumps({**d, "schema_version": 2}), where="p.onnx")


def test_unsupported_opset(exported, tmp_path):
    import onnx

    model = onnx.load(str(exported[1]))
    model.opset_import[0].version = 99
    bad = tmp_path / "opset99.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(ValueError, match="cannot load policy .*opset99.onnx"):
        OnnxPolicy(bad)


def test_chunk_queue_and_adaptive_chunking(tmp_path):
    torch.manual_seed(1)
    net = ChunkNet(horizon=4)
    spec = make_spec(horizon=4, n_action_steps=3)
    path = tmp_path / "chunk.onnx"
    export_onnx(net, spec, path)
    policy = OnnxPolicy(path)
    chunk = TorchPolicy(net, spec).predict_chunk(obs_sample(0))
    acts = [policy.act(obs_sample(0)) for _ in range(6)]
    assert policy.inferences == 2  # 3 executed actions per chunk
    np.testing.assert_allclose(np.array(acts[:3]), chunk[:3], atol=1e-5)
    # Adaptive chunking predicts every step; with tau = 1 any change replaces the queue.
    adaptive = OnnxPolicy(path, adaptive_tau=1.0)
    for seed in range(4):
        adaptive.act(obs_sample(seed))
    assert adaptive.inferences == 4
    with pytest.raises(ValueError, match="adaptive_tau"):
        OnnxPolicy(path, adaptive_tau=2.0)


def test_observation_history_is_stacked(tmp_path):
    class HistoryNet(torch.nn.Module):
        def forward(self, obs):  # (B, 2, 3) -> last minus first
            return obs["x"][:, 1] - obs["x"][:, 0]

    spec = PolicySpec(obs={"x": ObsField((3,))}, action_dim=3, action_low=(-9.0,) * 3, action_high=(9.0,) * 3,
                      n_obs_steps=2)
    path = tmp_path / "hist.onnx"
    export_onnx(HistoryNet(), spec, path)
    policy = OnnxPolicy(path)
    first = policy.act({"x": np.ones(3, np.float32)})
    np.testing.assert_allclose(first, 0.0)  # the first observation is repeated after reset
    second = policy.act({"x": np.full(3, 3.0, np.float32)})
    np.testing.assert_allclose(second, 2.0)


def test_onnx_backend_imports_no_torch(exported):
    code = (
        "import sys\n"
        "from serl_ctrl.runtime import load_policy\n"
        "import numpy as np\n"
        f"p = load_policy({str(exported[1])!r})\n"
        "a = p.act({'state': np.zeros(7, np.float32), 'cam': np.zeros((16, 16, 3), np.uint8)})\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m.startswith('serl_ctrl.agents')"
        " or m.startswith('serl_ctrl.envs') or m.startswith('serl_ctrl.export')]\n"
        "assert not bad, bad\n"
        "print('ok', a.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok (4,)" in out.stdout
