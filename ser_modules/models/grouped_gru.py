"""GRU layers run in lockstep by a small C++ kernel on CPU (``ser_modules/csrc/grouped_gru.cpp``).

On CPU, ``nn.GRU`` computes each time step as one small matrix product and about ten dispatched
element-wise operations, each recorded for autograd: at the demo's sizes (32-192 units) a training
step spends most of its time in dispatch, not arithmetic. The kernel does each step as one GEMM and
a few plain loops around ATen's vectorised sigmoid, writes its own backward pass (one GEMM per step;
the weight gradient as one GEMM over the whole sequence), and runs G independent GRUs together:
the two directions of a bidirectional layer, or IAAN's three GRUs, in parallel threads. (LSTMs keep
``nn.LSTM``: on CPU it runs oneDNN's fused LSTM, which a version of this kernel did not beat.)

The equations, weight layout and zero initial state are ``nn.GRU``'s, and the parameters stay in
``nn.GRU`` modules, so checkpoints are unchanged and either path can run any model. The kernel is
compiled once per machine and instruction set on first use (about 20 s; cached by PyTorch under
``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). Without a C++ compiler, or with
``SER_FUSED_GRU=0``, models use ``nn.GRU`` and a warning says so once.

Shapes (:class:`GRURecurrence`, the kernel's layout): input projections ``gi [G, T, B, 3H]``
(``x W_ih^T + b_ih``, gate order r, z, n), ``w_hh [G, 3H, H]``, ``b_hh [G, 3H]`` -> hidden states
``[G, T, B, H]``; :func:`recurrence` takes and returns batch-first tensors, one per GRU.
"""

from __future__ import annotations

import logging
import os
import threading

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "grouped_gru.cpp")
ENV_SWITCH = "SER_FUSED_GRU"
ARCH_FLAGS = {"AVX512": ["-march=x86-64-v4"], "AVX2": ["-march=x86-64-v3"]}  # lets the loops vectorise
_lock = threading.Lock()
_state: dict = {}


def kernel():
    """The compiled extension, or None when ``SER_FUSED_GRU=0`` or it cannot be built here."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    with _lock:
        if "module" not in _state:
            _state["module"] = _build()
    return _state["module"]


def _build():
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)  # its "no CUDA runtime" notice does not concern a CPU kernel
    try:
        from torch.utils.cpp_extension import load

        capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
        arch = ARCH_FLAGS.get(capability, [])
        # One build per instruction set: a cache shared by machines of different CPUs stays safe.
        name = "ser_grouped_gru" + (f"_{capability.lower()}" if arch else "")
        return load(name, [SOURCE], extra_cflags=["-O3", *arch], verbose=False)
    except Exception as err:  # no compiler, no ninja, read-only cache: the nn.GRU path still works
        message = str(err).strip().splitlines()
        logger.warning("the grouped CPU GRU kernel could not be built (%s); using nn.GRU, which is slower on CPU. "
                       "Set %s=0 to silence this.", message[-1] if message else type(err).__name__, ENV_SWITCH)
        return None
    finally:
        cpp_logger.setLevel(level)


def usable(x: torch.Tensor) -> bool:
    """Whether the kernel can run on ``x`` (a CPU float32/float64 tensor) and is available."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and kernel() is not None


class GRURecurrence(torch.autograd.Function):
    """``hs = recurrence(gi, w_hh, b_hh, steps)``; group ``g`` runs ``steps[g]`` steps (default all)
    and its later outputs are zero. See the module docstring for shapes."""

    @staticmethod
    def forward(ctx, gi, w_hh, b_hh, steps=None):
        steps = [gi.shape[1]] * gi.shape[0] if steps is None else [int(n) for n in steps]
        hs, rz, n, ghn = kernel().forward(gi, w_hh, b_hh, steps)
        ctx.save_for_backward(w_hh, hs, rz, n, ghn)
        ctx.steps = steps
        return hs

    @staticmethod
    def backward(ctx, dhs):
        w_hh, hs, rz, n, ghn = ctx.saved_tensors
        dgi, dgh = kernel().backward(dhs, w_hh, hs, rz, n, ghn, ctx.steps)
        groups, steps, batch, hidden = hs.shape
        h_prev = torch.cat([hs.new_zeros(groups, 1, batch, hidden), hs[:, :-1]], dim=1)
        dw_hh = torch.bmm(dgh.reshape(groups, -1, 3 * hidden).transpose(1, 2), h_prev.reshape(groups, -1, hidden))
        return dgi, dw_hh, dgh.sum(dim=(1, 2)), None


def recurrence(gi: list[torch.Tensor], grus: list[nn.GRU]) -> list[torch.Tensor]:
    """Hidden states ``[B, T_g, H]`` of single-layer ``grus`` from their input projections
    ``gi[g] [B, T_g, 3H]`` (:func:`input_projection`); each GRU runs its own ``T_g`` steps."""
    steps = [x.shape[1] for x in gi]
    longest = max(steps)
    stacked = torch.stack([torch.nn.functional.pad(x, (0, 0, 0, longest - x.shape[1])) for x in gi])
    w_hh = torch.stack([g.weight_hh_l0 for g in grus])
    b_hh = torch.stack([g.bias_hh_l0 for g in grus])
    hs = GRURecurrence.apply(stacked.transpose(1, 2), w_hh, b_hh, steps).transpose(1, 2)  # kernel layout [G, T, B, H]
    return [h[:, :n] for h, n in zip(hs, steps)]


def input_projection(x: torch.Tensor, grus: list[nn.GRU]) -> torch.Tensor:
    """``x [B, T, D]`` through the input weights of every GRU at once -> ``[B, T, G * 3H]``."""
    weight = torch.cat([g.weight_ih_l0 for g in grus])
    bias = torch.cat([g.bias_ih_l0 for g in grus])
    return torch.nn.functional.linear(x, weight, bias)
