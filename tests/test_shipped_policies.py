"""The policies shipped in policies/: intact, described, and as good as their cards say."""

from __future__ import annotations

import json

import pytest

from serl_ctrl.paths import data_dir
from serl_ctrl.runtime import load_policy
from serl_ctrl.runtime.evaluate import evaluate, make_eval_env
from serl_ctrl.runtime.onnx_policy import file_sha256

SHIPPED = sorted(data_dir("policies").glob("*.onnx"))
CARD_FIELDS = {"algo", "task", "obs", "success_rate", "eval_episodes", "eval_seeds", "infer_ms_p50", "sha256", "command"}


def test_policies_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"pickcube_diffusion_state", "pickcube_consistency_state", "pickcube_sac_state",
            "pickcube_bc_pixels"} <= names, names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_card_and_file(path):
    card = json.loads(path.with_suffix(".json").read_text())
    assert CARD_FIELDS <= set(card), CARD_FIELDS - set(card)
    assert card["sha256"] == file_sha256(path)
    assert path.stat().st_size < 20 * 1024 * 1024
    policy = load_policy(path.stem)  # by name, as the ROS node and `serl-ctrl eval` find it
    assert policy.spec.task == card["task"] and policy.spec.algo == card["algo"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_success_rate_reproduces_on_fresh_seeds(path):
    """Within 10 points of the card over 30 episodes on seeds the card never saw (50000+)."""
    card = json.loads(path.with_suffix(".json").read_text())
    policy = load_policy(path)
    env = make_eval_env(policy)
    result = evaluate(policy, env, episodes=30, seed=50_000)
    env.close()
    assert abs(result["success_rate"] - card["success_rate"]) <= 0.10, (result, card["success_rate"])
