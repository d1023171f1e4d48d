"""Module paths from before the library was split into subpackages (up to commit 2939a2a).

Two kinds of outputs name classes by their module path. The hparams files that experiments and
exported models keep (``!new:ser_modules.features.LogSpectrogram`` in ``asr/model_hparams.yaml``)
are loaded again by inference; and cache keys and digests are computed from class paths (a
representation store's key names its feature extractor's class, stage 2's configuration digest the
classes of its hparams). So the old paths of those modules still import (:func:`install_redirects`,
with a DeprecationWarning naming the new path), and keys and digests are computed with the old names
(:func:`legacy_name`, :func:`legacy_text`): an experiment made before the split stays finished, and
its outputs are the same bytes.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# new module -> the path its classes had in keys, digests and stored hparams
LEGACY_MODULES = {
    "ser_modules.data.features": "ser_modules.features",
    "ser_modules.data.text": "ser_modules.text",
    "ser_modules.asr.brains": "ser_modules.asr_training",
    "ser_modules.upstreams.encoders": "ser_modules.upstream",
}
# old module -> new module, importable for the hparams files of older experiments and exports
REDIRECTS = {
    "ser_modules.features": "ser_modules.data.features",
    "ser_modules.text": "ser_modules.data.text",
    "ser_modules.asr_training": "ser_modules.asr.brains",
}


def legacy_name(qualified: str) -> str:
    """``ser_modules.data.features.MFCC`` -> ``ser_modules.features.MFCC`` (other names unchanged)."""
    module, _, name = qualified.rpartition(".")
    return f"{LEGACY_MODULES.get(module, module)}.{name}" if module else qualified


def legacy_text(text: str) -> str:
    """``text`` with every class path of a moved module written with its old module path."""
    for new, old in LEGACY_MODULES.items():
        text = text.replace(f"{new}.", f"{old}.")
    return text


class _Redirect(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as its new module (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in REDIRECTS else None

    def create_module(self, spec):
        return None  # a placeholder module, replaced in sys.modules below

    def exec_module(self, module):
        new = REDIRECTS[module.__name__]
        warnings.warn(f"{module.__name__} is now {new}", DeprecationWarning, stacklevel=2)
        # the import system returns what sys.modules holds after this call: the new module itself
        sys.modules[module.__name__] = importlib.import_module(new)


def install_redirects() -> None:
    if not any(isinstance(f, _Redirect) for f in sys.meta_path):
        sys.meta_path.append(_Redirect())
