"""Tiny episodes for the imitation tests (diffusion, consistency)."""

from __future__ import annotations

import numpy as np

from serl_ctrl.data.episodes import Episode


def toy_episodes(n: int = 4, T: int = 6, action_fn=None, seed: int = 0) -> list[Episode]:
    """Episodes with a 2-d state ``x`` (= step index, episode index) and 2-d actions."""
    rng = np.random.default_rng(seed)
    eps = []
    for e in range(n):
        obs = {"x": np.stack([np.arange(T + 1), np.full(T + 1, e)], 1).astype(np.float32)}
        act = action_fn(e, T, rng) if action_fn else np.stack([np.arange(T), -np.arange(T)], 1).astype(np.float32)
        eps.append(Episode(observations=obs, actions=act.astype(np.float32), rewards=np.zeros(T, np.float32),
                           terminated=np.zeros(T, bool), truncated=np.zeros(T, bool), success=np.zeros(T, bool),
                           instructions=[""] * T, metadata={"task": "toy", "action_low": [-1e3, -1e3],
                                                            "action_high": [1e3, 1e3]}))
    return eps


def write_toy_episodes(folder, episodes: list[Episode]) -> None:
    """Save toy episodes as a demos folder (completing their metadata as recorded episodes have it)."""
    from serl_ctrl.data.episodes import make_metadata, write_episodes_dir

    for i, ep in enumerate(episodes):
        md = dict(ep.metadata)
        ep.metadata = make_metadata(task=md.pop("task"), backend="none", obs_mode="state", seed=i, control_hz=10.0,
                                    action_low=md.pop("action_low"), action_high=md.pop("action_high"), **md)
    write_episodes_dir(folder, episodes)
