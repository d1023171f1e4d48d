"""Models as plain ``torch.nn`` modules, usable outside any recipe.

ASR: :class:`~ser_modules.models.ds2.DeepSpeech2` (Lakomkin 2018) and
:class:`~ser_modules.models.las.ListenAttendSpell` (Yeh 2020). Both return the hidden sequence of
any named layer with ``forward_layers``. SER: the heads of :mod:`ser_modules.models.ser`. Floor 3.

May import: utils, data.
"""

from __future__ import annotations


def requested_layers(layers, available: list[str], model: str) -> tuple[list[str], int]:
    """Validate requested layer names; return them (default: all) and the index of the deepest."""
    wanted = list(available if layers is None else layers)
    unknown = [n for n in wanted if n not in available]
    if unknown or not wanted:
        raise KeyError(f"unknown {model} layer(s) {unknown or wanted}; available: {available}")
    return wanted, max(available.index(n) for n in wanted)
