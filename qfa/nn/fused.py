"""The elementwise bodies of the fake quantizers, each compiled into one loop over memory.

Eager PyTorch runs a fake quantizer as ~6 passes forward and ~8 backward over the activation,
a large share of a quantized training step. Each function below is the
definition (run eagerly for small tensors, where a compiled call's guard checks cost more than
the passes it saves) and is handed to ``torch.compile`` (inductor: C++/OpenMP on CPU, Triton on
GPU) for large ones, where it becomes one fused loop. Callers pass tensors flattened to 1-D and
they are detached here, so one graph per function serves every layer; shaped, sliced weights
would make dynamo specialise on size-1 dims, strides
and view bases, towards its limit of 8 graphs, past which it runs a function eagerly. The
backward passes recompute the forward from ``x`` instead of saving the output and a mask: less
memory, and the recompute is free inside the fused loop.

``QFA_COMPILE=0`` keeps everything eager; if compilation fails (no C++ compiler, an
unsupported backend) the toolkit warns once and stays eager, with the same values.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

__all__ = ["EPS", "range_params", "affine_forward", "affine_backward", "lsq_forward", "lsq_backward"]

EPS = torch.finfo(torch.float32).eps
_enabled = os.environ.get("QFA_COMPILE", "1") != "0"


def _fused(min_numel: int) -> Callable[[Callable], Callable]:
    """Compile the decorated function for tensors of at least ``min_numel`` elements (below
    that, the compiled call's guard checks cost more than the passes it saves)."""
    def wrap(fn: Callable) -> Callable:
        compiled = torch.compile(fn, dynamic=True)  # lazy: compiles at the first large call

        def call(x: torch.Tensor, *args):
            global _enabled
            if _enabled and x.numel() >= min_numel:
                try:  # detached: no requires_grad flag, and no view base whose shape dynamo would guard on
                    return compiled(x.detach(), *(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
                except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, same values
                    _enabled = False
                    warnings.warn(f"qfa: torch.compile of the fake quantizers failed ({type(e).__name__}); "
                                  "running them eagerly (slower, same values)", RuntimeWarning, stacklevel=2)
            return fn(x, *args)

        call.__doc__, call.__name__, call.eager = fn.__doc__, fn.__name__, fn
        return call
    return wrap


def range_params(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchQuant's grid on [lo, hi] widened to include 0: step s and integer zero point z."""
    lo = lo.clamp(max=0.0)
    hi = hi.clamp(min=0.0)
    s = ((hi - lo) / (qmax - qmin)).clamp(min=EPS)
    z = (qmin - torch.round(lo / s)).clamp(qmin, qmax)
    return s, z


# The grid's scalars (c, zo) come in computed: inside a compiled loop inductor would recompute
# them for every element. c*x + zo is a multiply then an add, never addcmul:
# eager addcmul is a fused multiply-add (one rounding), inductor's loop rounds twice, and the odd
# value that lands on a .5 then rounds the other way (a block model's bytes then depended on
# whether its builder ran compiled).
@_fused(min_numel=1 << 16)
def affine_forward(x: torch.Tensor, c: torch.Tensor, zo: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """x^ = (round(clamp(c*x + zo)) - zo) / c, with c = alpha/s and zo = z + offset."""
    return (x * c).add_(zo).clamp_(qmin, qmax).round_().sub_(zo).div_(c)


@_fused(min_numel=1 << 13)
def affine_backward(g: torch.Tensor, x: torch.Tensor, c: torch.Tensor, zo: torch.Tensor, qmin: int,
                    qmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Straight-through gradient of x (zero where clamped), and the sums the scalar gradients
    need: alpha * dL/dalpha = sum(g*x inside) - sum(g*y), and sum(g outside)."""
    v = (x * c).add_(zo)
    gx = g * ((v >= qmin) & (v <= qmax))
    y = v.clamp_(qmin, qmax).round_().sub_(zo).div_(c)
    return gx, (gx * x).sum() - (g * y).sum(), g.sum() - gx.sum()


@_fused(min_numel=1 << 16)
def lsq_forward(w: torch.Tensor, s: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """w^ = round(clamp(w/s)) * s."""
    return (w / s).clamp_(qmin, qmax).round_().mul_(s)


@_fused(min_numel=1 << 13)
def lsq_backward(gy: torch.Tensor, w: torch.Tensor, s: torch.Tensor, qmin: int,
                 qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through gradient of w, and LSQ's step-size sum: sum(gy * (round(r) - r)) inside
    the range, sum(gy * bound) outside (r = w/s)."""
    r = w / s
    inside = (r >= qmin) & (r <= qmax)
    q = r.clamp(qmin, qmax).round_()
    return gy * inside, (gy * torch.where(inside, q - r, q)).sum()
