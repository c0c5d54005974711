"""MLPs and batched ensembles of MLPs.

The critic ensemble is one batched computation: every ``EnsembleLinear`` holds a stacked weight
tensor ``(E, in, out)`` and runs ``torch.baddbmm`` over all E members at once (no Python loop
over critics). ``LoopedEnsembleMLP`` is the straightforward per-member loop, kept as a
numerical reference for tests and as the baseline in ``bench/bench_sac_updates.py``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["activation", "float32_layer", "MLP", "EnsembleLinear", "EnsembleLayerNorm", "EnsembleMLP",
           "LoopedEnsembleMLP"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "tanh": torch.tanh, "elu": F.elu, "gelu": F.gelu, "silu": F.silu,
}


# In-place versions for freshly computed, unshared tensors: their backward needs only the
# output, so autograd allows them, and skipping an allocation matters on CPU, where these
# element-wise passes over (E, B, hidden) activations cost as much as the matmuls.
_INPLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu_, "tanh": torch.tanh_,
}


def activation(name: str, inplace: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called ``name`` (relu, tanh, elu, gelu, silu).

    ``inplace=True`` returns an in-place version where one is safe for autograd (relu, tanh);
    use it only on a tensor that nothing else holds."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of "
                         f"{', '.join(_ACTIVATIONS)}")
    if inplace and name in _INPLACE:
        return _INPLACE[name]
    return _ACTIVATIONS[name]


def float32_layer(layer: nn.Module, x: torch.Tensor, *args) -> torch.Tensor:
    """``layer(x, *args)`` computed in float32 even inside a bf16 autocast region.

    Mixed precision keeps output layers in float32: a bf16 Q-value has 8 mantissa bits, so a
    Q of ~80 would move in steps of ~0.5, larger than the TD errors the critic learns from;
    the actor's mean and log-std feed a tanh-Gaussian log-probability. The hidden layers, where
    the FLOPs are, stay in bf16. Outside autocast this is just ``layer(x, *args)``."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return layer(x.float(), *args)
    return layer(x, *args)


class MLP(nn.Module):
    """Linear -> [LayerNorm] -> act, repeated; optional output Linear.

    ``out_dim=None`` ends after the last hidden layer (activated)."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: Optional[int] = None,
                 *, layer_norm: bool = True, act: str = "relu") -> None:
        super().__init__()
        self.act_name = act
        self._act = activation(act, inplace=True)  # acts on fresh Linear/LayerNorm outputs
        dims = [in_dim, *hidden_dims]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(
            (nn.LayerNorm(b) if layer_norm else nn.Identity()) for b in dims[1:])
        self.out = nn.Linear(dims[-1], out_dim) if out_dim is not None else None
        self.out_dim = out_dim if out_dim is not None else dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin, norm in zip(self.linears, self.norms):
            x = self._act(norm(lin(x)))
        if self.out is not None:
            x = self.out(x)
        return x


class EnsembleLinear(nn.Module):
    """E independent linear layers evaluated with one ``baddbmm``.

    weight: ``(E, in, out)``, bias: ``(E, 1, out)``. Input ``(B, in)`` (shared by all members)
    or ``(E, B, in)``; output ``(E, B, out)``. ``members`` (a LongTensor of indices) evaluates
    only those members (used for the target's random subset), output ``(len(members), B, out)``.
    Initialised like ``nn.Linear`` independently per member."""

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.n, self.in_dim, self.out_dim = n, in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_dim) if self.in_dim > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)  # == kaiming_uniform(a=sqrt(5)) of Linear
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, members: Optional[torch.Tensor] = None) -> torch.Tensor:
        w, b = self.weight, self.bias
        if members is not None:
            w, b = w.index_select(0, members), b.index_select(0, members)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(w.shape[0], -1, -1)
        return torch.baddbmm(b, x, w)

    def forward_float32(self, x: torch.Tensor,
                        members: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The layer in float32 even inside a bf16 autocast region (see ``float32_layer``).

        For ``out_dim == 1`` (a critic's Q head) it is a multiply-sum that torch.compile fuses
        into one pass over the bf16 input, instead of a float32 copy of ``(E, B, in)`` and then
        a matmul: ~10% of a compiled bf16 critic update on CPU."""
        if not torch.is_autocast_enabled(x.device.type):
            return self(x, members)
        with torch.autocast(x.device.type, enabled=False):
            if self.out_dim != 1:
                return self(x.float(), members)
            w, b = self.weight, self.bias
            if members is not None:
                w, b = w.index_select(0, members), b.index_select(0, members)
            return (x.float() * w.transpose(1, 2)).sum(-1, keepdim=True) + b

    def extra_repr(self) -> str:
        return f"n={self.n}, in_dim={self.in_dim}, out_dim={self.out_dim}"


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim with a separate affine transform per ensemble member."""

    def __init__(self, n: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(n, 1, dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, dim))

    def forward(self, x: torch.Tensor, members: Optional[torch.Tensor] = None) -> torch.Tensor:
        w, b = self.weight, self.bias
        if members is not None:
            w, b = w.index_select(0, members), b.index_select(0, members)
        return torch.addcmul(b, F.layer_norm(x, (self.dim,), eps=self.eps), w)


class EnsembleMLP(nn.Module):
    """E MLPs (same shape, independent weights) as one batched computation.

    ``forward(x)`` with x ``(B, in)`` returns ``(E, B, out)``; ``forward(x, members)`` only
    the given members."""

    def __init__(self, n: int, in_dim: int, hidden_dims: Sequence[int], out_dim: int, *,
                 layer_norm: bool = True, act: str = "relu") -> None:
        super().__init__()
        self.n = n
        self.act_name = act
        self.layer_norm = layer_norm
        self._act = activation(act, inplace=True)  # acts on fresh baddbmm/addcmul outputs
        dims = [in_dim, *hidden_dims]
        self.linears = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(EnsembleLayerNorm(n, b) for b in dims[1:]) if layer_norm \
            else None
        self.out = EnsembleLinear(n, dims[-1], out_dim)

    def forward(self, x: torch.Tensor, members: Optional[torch.Tensor] = None) -> torch.Tensor:
        for i, lin in enumerate(self.linears):
            x = lin(x, members)
            if self.norms is not None:
                x = self.norms[i](x, members)
            x = self._act(x)
        return self.out.forward_float32(x, members)


class LoopedEnsembleMLP(nn.Module):
    """Reference: E separate ``MLP`` modules evaluated in a Python loop (same math)."""

    def __init__(self, n: int, in_dim: int, hidden_dims: Sequence[int], out_dim: int, *,
                 layer_norm: bool = True, act: str = "relu") -> None:
        super().__init__()
        self.members = nn.ModuleList(
            MLP(in_dim, hidden_dims, out_dim, layer_norm=layer_norm, act=act) for _ in range(n))

    @classmethod
    def from_ensemble(cls, ens: EnsembleMLP) -> "LoopedEnsembleMLP":
        """A looped copy holding exactly the weights of ``ens``."""
        in_dim = ens.linears[0].in_dim
        hidden = [lin.out_dim for lin in ens.linears]
        self = cls(ens.n, in_dim, hidden, ens.out.out_dim, layer_norm=ens.layer_norm,
                   act=ens.act_name)
        with torch.no_grad():
            for e, m in enumerate(self.members):
                for i, lin in enumerate(ens.linears):
                    m.linears[i].weight.copy_(lin.weight[e].T)
                    m.linears[i].bias.copy_(lin.bias[e, 0])
                    if ens.norms is not None:
                        m.norms[i].weight.copy_(ens.norms[i].weight[e, 0])
                        m.norms[i].bias.copy_(ens.norms[i].bias[e, 0])
                m.out.weight.copy_(ens.out.weight[e].T)
                m.out.bias.copy_(ens.out.bias[e, 0])
        return self

    def forward(self, x: torch.Tensor, members: Optional[torch.Tensor] = None) -> torch.Tensor:
        idx = range(len(self.members)) if members is None else members.tolist()
        return torch.stack([self.members[i](x) for i in idx])
