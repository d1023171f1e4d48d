"""The SpeechBrain side of an export: its ``hyperparams.yaml`` (the fold models as ``!new:`` blocks
and an :class:`ExportPretrainer` of their weights) and ``custom_interface.py`` (the ``foreign_class``
entry point, :data:`INTERFACE_SOURCE`), so SpeechBrain users load an export as any hub model.
"""

from __future__ import annotations

import yaml
from speechbrain.utils.parameter_transfer import Pretrainer

INTERFACE_FILE, INTERFACE_CLASS = "custom_interface.py", "SpeechEmotionRecognizer"

class _Tagged:
    """A YAML node written with a HyperPyYAML tag (``!new:``, ``!ref``)."""

    def __init__(self, tag: str, value):
        self.tag, self.value = tag, value


class _HyperDumper(yaml.SafeDumper):
    pass


def _represent_tagged(dumper: yaml.SafeDumper, node: _Tagged):
    if isinstance(node.value, dict):
        return dumper.represent_mapping(node.tag, node.value)
    return dumper.represent_scalar(node.tag, node.value)


_HyperDumper.add_representer(_Tagged, _represent_tagged)


def _new(blueprint: tuple) -> _Tagged:
    """``!new:module.Class`` with the keyword arguments of a :func:`model_blueprint`."""
    cls, kwargs = blueprint
    return _Tagged(f"!new:{cls.__module__}.{cls.__qualname__}",
                   {k: _new(v) if isinstance(v, tuple) else v for k, v in kwargs.items()})


def fold_key(fold: str) -> str:
    """The fold's loadable name in ``hyperparams.yaml`` (a module name: no dots)."""
    return "ser_" + "".join(c if c.isalnum() or c in "_-" else "_" for c in fold)


def module_key(fold: str) -> str:
    """The fold's key in the ``ser_models`` ModuleDict (which refuses dots)."""
    return fold.replace(".", "_")


def hyperparams_yaml(config: dict, fold_models: dict[str, tuple], files: dict[str, str]) -> str:
    """What the folder is, and the SER fold models wired SpeechBrain style: ``!new:`` modules, ``modules``
    and a ``pretrainer`` whose loadables are each fold's weights (``files``: paths inside the folder)."""
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
    keys = {fold: fold_key(fold) for fold in fold_models}
    wiring = {key: _new(fold_models[fold]) for fold, key in keys.items()}
    wiring["ser_models"] = _Tagged("!new:torch.nn.ModuleDict",
                                   {"modules": {module_key(fold): _Tagged("!ref", f"<{key}>")
                                                for fold, key in keys.items()}})
    wiring["modules"] = {"ser_models": _Tagged("!ref", "<ser_models>")}
    wiring["pretrainer"] = _Tagged("!new:ser_modules.export.ExportPretrainer",
                                   {"loadables": {key: _Tagged("!ref", f"<{key}>") for key in keys.values()},
                                    "files": {keys[fold]: files[fold] for fold in keys}})
    return (
        "# An exported speech emotion recognizer (ser_modules.export). Load it with\n"
        "#   EmotionRecognizer.from_pretrained(<this folder>)           (ser_modules.infer)\n"
        "#   python -m ser_modules.infer <this folder> audio.wav\n"
        f"#   foreign_class(source=<this folder>, pymodule_file=\"{INTERFACE_FILE}\", classname=\"{INTERFACE_CLASS}\")\n"
        "# manifest.json holds the digest of every file.\n"
        f"{body}\n"
        "# The SER model of each fold (inference averages their class probabilities); the pretrainer loads\n"
        "# each one's weights from its file in this folder. The ASR/upstream front end they read loads from\n"
        "# asr/, adapt/ or upstream/ (see the model card).\n"
        + yaml.dump(wiring, Dumper=_HyperDumper, sort_keys=False, default_flow_style=False, width=100)
    )


class ExportPretrainer(Pretrainer):
    """SpeechBrain's ``Pretrainer`` whose loadables' ``files`` are paths inside the exported folder, the
    ``default_source`` that ``foreign_class`` gives ``collect_files``; it remembers that folder as ``source``."""

    def __init__(self, loadables=None, files=None, collect_in=None):
        super().__init__(collect_in=collect_in, loadables=loadables)
        self.files, self.source = dict(files or {}), None

    def collect_files(self, default_source=None, **kwargs):
        if default_source is None:
            raise ValueError("an exported model's pretrainer needs its folder as default_source")
        self.source = str(default_source)
        for name, rel in self.files.items():
            self.paths.setdefault(name, f"{self.source.rstrip('/')}/{rel}")
        return super().collect_files(default_source=default_source, **kwargs)


INTERFACE_SOURCE = '''"""SpeechBrain entry point of an exported speech emotion recognizer (written by ser_modules.export).

    from speechbrain.inference.interfaces import foreign_class
    rec = foreign_class(source="<this folder>", pymodule_file="custom_interface.py",
                        classname="SpeechEmotionRecognizer")
    rec.classify_file("a.wav")   # {"emotion": ..., "probabilities": {...}, "transcript": ...}

Needs speechbrain and the ser_modules package installed; nothing is downloaded. The source is the
exported folder on this machine (any savedir and local_strategy; a savedir holding another export's
files is refused: SpeechBrain keeps files already there).
"""

from speechbrain.inference.interfaces import Pretrained


class SpeechEmotionRecognizer(Pretrained):
    """Wraps ser_modules.infer.EmotionRecognizer loaded from the folder this file lives in."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from ser_modules.infer import EmotionRecognizer

        # The fold models came from hyperparams.yaml with the pretrainer's weights; the front end they
        # read and the manifest check come from the exported folder the pretrainer collected from.
        self.recognizer = EmotionRecognizer.from_pretrained(
            self.hparams.pretrainer.source, device=str(self.device), ser_models=self.mods.ser_models,
            export_id=self.hparams.export_id)

    def classify_file(self, path):
        row = self.recognizer.predict_files([path])[0]
        if row["status"] != "ok":
            raise RuntimeError(row["error"])
        classes = self.recognizer.classes
        return {"emotion": row.get("emotion", ""), "probabilities": {c: float(row[f"p_{c}"]) for c in classes},
                "attributes": {a: float(row[a]) for a in self.recognizer.attributes},
                "transcript": row.get("transcript", "")}

    def classify_batch(self, wavs, wav_lens=None):
        """Class probabilities [N, n_classes] (then attribute values, for a variant with attributes) of 16 kHz
        mono signals ``wavs [N, S]`` (relative lengths)."""
        signals = [w[: int(round(float(r) * wavs.shape[1]))] if wav_lens is not None else w
                   for w, r in zip(wavs.cpu(), wav_lens if wav_lens is not None else [1.0] * len(wavs))]
        return self.recognizer.predict_signals(signals)
'''
