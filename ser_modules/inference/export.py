"""Export a trained SER variant as a self-contained folder that loads without its experiment
(the command: :mod:`ser_modules.export`).

The folder holds exactly what inference reads, at the paths the experiment had them, and nothing else:

- ``ser/<variant>/<fold>/run<k>/model.{pt,json}``: the SER model of each exported fold (inference
  averages their class probabilities, as :class:`ser_modules.infer.EmotionRecognizer` does);
- the ASR models those folds read and the one that transcribes (``asr/model.{pt,json}``, per-fold
  adapted ``adapt/<name>/<fold>/model.{pt,json}``) with the model blocks that rebuild them
  (``asr/model_hparams.yaml``: architecture, features, vocabulary);
- the decoding keys (``asr/hyperparams.yaml``, ``adapt/hyperparams.yaml``: ``beam_size``,
  ``decode_ctc_weight`` only), the representation precision (``dump/hyperparams.yaml``: ``dtype``) and
  the handcrafted feature extractor of variants that read one (``dump/handcrafted_hparams.yaml``);
- ``results.csv`` of stage 6, ``hyperparams.yaml`` and ``custom_interface.py`` (SpeechBrain's
  ``foreign_class`` entry point: :mod:`ser_modules.inference.hub_interface`), ``README.md`` (the model
  card) and ``manifest.json``: the SHA-256 of every other file.

:func:`verify_export` (run by ``EmotionRecognizer.from_pretrained``) refuses a folder with a missing or
altered file in one line naming it. Export refuses a variant stage 6 did not score as complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid

import pandas as pd
import yaml
from hyperpyyaml import load_hyperpyyaml

from ser_modules.asr.saved_models import asr_model_path
from ser_modules.inference.experiment import best_variant, decoding_keys
from ser_modules.inference.hub_interface import INTERFACE_FILE, INTERFACE_SOURCE, hyperparams_yaml
from ser_modules.ser.variants import VariantSpec, model_blueprint
from ser_modules.utils.environment import environment
from ser_modules.utils.fileio import ManifestError, file_digest, read_json, write_json, write_text
from ser_modules.utils.hparams import stage_values

EXPORT_FORMAT = 1


MANIFEST = "manifest.json"




DECODING_KEYS = ("beam_size", "decode_ctc_weight")


def sha256(path: str) -> str:
    return file_digest(path, algorithm="sha256")


def verify_export(folder: str) -> dict:
    """The export's ``manifest.json`` after checking every file it lists against its digest;
    :class:`ManifestError` naming the first missing or altered file."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise ManifestError(f"{folder}: not an exported model folder (no {MANIFEST}; export one with "
                            "python -m ser_modules.export EXP --out DIR)")
    manifest = read_json(path)
    if manifest.get("format") != EXPORT_FORMAT or not isinstance(manifest.get("files"), dict):
        raise ManifestError(f"{path}: export format {manifest.get('format')!r}, this version reads {EXPORT_FORMAT}")
    # The loader lists folders (fold models, upstream weights): a file the manifest does not list is refused.
    listed = set(manifest["files"]) | {MANIFEST}
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel not in listed:
                raise ManifestError(f"{os.path.join(root, name)}: not part of the exported model (not in {MANIFEST}); "
                                    "remove it")
    from ser_modules.upstreams.formats import upstream_kind, weight_files

    external = manifest.get("external", {})
    for source in sorted({os.path.dirname(p) for p in external}):
        try:  # a referenced upstream folder (not the folder a referenced checkpoint file lies in)
            is_folder_upstream = os.path.isdir(source) and upstream_kind(source) in ("hf", "speechbrain")
        except ManifestError:
            is_folder_upstream = False
        if is_folder_upstream:
            for file in weight_files(source):
                if os.path.abspath(file) not in external:
                    raise ManifestError(f"{file}: added to the referenced upstream since export (not in {MANIFEST})")
    for name, digest in [*manifest["files"].items(), *external.items()]:
        file = os.path.join(folder, name)  # an external (referenced upstream) file's name is absolute
        if not os.path.isfile(file):
            raise ManifestError(f"{file}: missing from the exported model (listed in {MANIFEST})"
                                + ("; the upstream it references is gone" if os.path.isabs(name) else ""))
        if sha256(file) != digest:
            raise ManifestError(f"{file}: altered since export (its SHA-256 differs from {MANIFEST})")
    return manifest


def export_hparams(folder: str) -> dict:
    """The export's ``hyperparams.yaml`` loaded (HyperPyYAML): what the folder is, and its fold models
    built (``ser_models``; their weights are loaded by the ``pretrainer``, or by the caller)."""
    with open(os.path.join(folder, "hyperparams.yaml"), encoding="utf-8") as f:
        return load_hyperpyyaml(f)


def _scored_row(exp_dir: str, variant: str) -> pd.Series:
    """The variant's row of stage 6's ``results.csv``; refuses a variant not scored, or scored incomplete."""
    path = os.path.join(exp_dir, "results.csv")
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: missing; run stage 6 before exporting (export takes scored variants only)")
    results = pd.read_csv(path)
    rows = results[results["model"] == variant]
    if not len(rows):
        raise ManifestError(f"{path}: no variant {variant!r}; scored: {sorted(results['model'])}")
    row = rows.iloc[0]
    if "complete" in row and not bool(row["complete"]):
        raise ManifestError(f"{path}: variant {variant!r} was scored on incomplete folds; finish stage 5 and "
                            "rerun stage 6 before exporting it")
    return row


class _Copier:
    """Copies experiment files into the export at the same relative paths, refusing files outside it.
    An upstream's folder (outside the experiment) is copied to ``upstream/<name>/``, or with
    ``upstream_weights`` False referenced: its files' digests go to the manifest's ``external``."""

    def __init__(self, exp_dir: str, out_dir: str, upstream_weights: bool = True):
        self.exp, self.out, self.files = os.path.abspath(exp_dir), out_dir, []
        self.upstream_weights, self.external, self.upstreams = upstream_weights, {}, {}

    def copy(self, path: str) -> None:
        path = os.path.abspath(path)
        rel = os.path.relpath(path, self.exp)
        if rel.startswith(".."):
            raise ManifestError(f"{path}: outside the experiment {self.exp}; cannot export it")
        if rel in self.files:
            return
        if not os.path.isfile(path):
            raise ManifestError(f"{path}: missing; the experiment is incomplete")
        os.makedirs(os.path.dirname(os.path.join(self.out, rel)), exist_ok=True)
        shutil.copyfile(path, os.path.join(self.out, rel))
        self.files.append(rel)

    def write(self, rel: str, text: str) -> None:
        write_text(os.path.join(self.out, rel), text)
        if rel not in self.files:
            self.files.append(rel)

    def asr_model(self, model_pt: str) -> None:
        """An exported ASR model: weights, ``model.json`` and the model blocks it is rebuilt from."""
        info_path = os.path.join(os.path.dirname(model_pt), "model.json")
        info = read_json(info_path)
        if os.path.basename(model_pt) == "model.pt":
            self.copy(model_pt)
        if info.get("upstream"):
            self.copy_upstream(info, info_path)
            return
        self.copy(info_path)
        if info.get("asr_hparams"):
            self.copy(os.path.join(os.path.dirname(model_pt), info["asr_hparams"]))

    def copy_upstream(self, info: dict, info_path: str) -> None:
        """The upstream folder of ``info_path``'s model and that ``model.json``, its source rewritten
        to the copy (relative) or kept (an absolute reference, digests in ``external``)."""
        from ser_modules.asr.saved_models import upstream_source
        from ser_modules.upstreams.formats import upstream_kind, weight_files

        source = upstream_source(info, info_path)
        upstream_kind(source)  # still an upstream folder or checkpoint, or one line saying what is missing
        name = os.path.basename(os.path.normpath(source))
        rel_info = os.path.relpath(os.path.abspath(info_path), self.exp)
        if self.upstream_weights:
            target = self.upstreams.setdefault(source, f"upstream/{os.path.splitext(name)[0] if os.path.isfile(source) else name}")
            for file in weight_files(source):
                rel = f"{target}/{os.path.basename(file)}"
                if rel not in self.files:
                    os.makedirs(os.path.join(self.out, target), exist_ok=True)
                    shutil.copyfile(file, os.path.join(self.out, rel))
                    self.files.append(rel)
            # a checkpoint file is the upstream itself (its architecture stays in model.json)
            copied = f"{target}/{name}" if os.path.isfile(source) else target
            new_source = os.path.relpath(copied, os.path.dirname(rel_info))
        else:
            for file in weight_files(source):
                self.external[os.path.abspath(file)] = sha256(file)
            new_source = source
        self.write(rel_info, json.dumps({**info, "upstream": {**info["upstream"], "source": new_source}}, indent=2) + "\n")


def export_variant(exp_dir: str, out_dir: str, variant: str | None = None, folds: str = "all", run: int = 0,
                   upstream_weights: bool = True) -> dict:
    """Write the export of ``variant`` (default: the best UA of ``results.csv``) to ``out_dir`` (which
    must not exist, or be empty); ``folds`` ``all`` or a number: the first N folds' models. Returns the
    manifest. The folder is built beside ``out_dir`` and renamed into place when complete."""
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise ManifestError(f"{out_dir}: exists and is not empty; export into a new folder")
    variant = variant or best_variant(exp_dir)
    row = _scored_row(exp_dir, variant)
    vdir = os.path.join(exp_dir, "ser", variant)
    if not os.path.isdir(vdir):
        raise ManifestError(f"{vdir}: missing; the variant {variant!r} has no trained models")
    names = sorted(f for f in os.listdir(vdir) if os.path.isdir(os.path.join(vdir, f)) and not f.startswith("."))
    if folds != "all":
        if not str(folds).isdigit() or not 1 <= int(folds) <= len(names):
            raise ManifestError(f"--folds {folds}: give all or a number from 1 to {len(names)}")
        names = names[: int(folds)]
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(dir=parent, prefix=".export-")  # renamed onto out_dir when complete
    try:
        return _export(exp_dir, out_dir, work, variant, row, vdir, names, run, upstream_weights)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone once renamed; a failed export leaves nothing


def _export(exp_dir, out_dir, work, variant, row, vdir, names, run, upstream_weights) -> dict:
    copier = _Copier(exp_dir, work, upstream_weights)
    spec = classes = spec_dict = None
    blueprints, weights = {}, {}
    for name in names:
        run_dir = os.path.join(vdir, name, f"run{run}")
        if not os.path.isfile(os.path.join(run_dir, "model.pt")):
            raise ManifestError(f"{run_dir}: no trained model; the variant's folds are incomplete")
        copier.copy(os.path.join(run_dir, "model.json"))
        copier.copy(os.path.join(run_dir, "model.pt"))
        info = read_json(os.path.join(run_dir, "model.json"))
        spec, classes, spec_dict = VariantSpec.from_dict(info["variant"]), info["classes"], info["variant"]
        blueprints[name] = model_blueprint(spec, info["dims"], len(classes), info["dropout"],
                                           len(info.get("attributes") or []))
        weights[name] = os.path.relpath(os.path.join(run_dir, "model.pt"), exp_dir)
        if spec.asr:
            copier.asr_model(asr_model_path(exp_dir, spec.asr, name))
    upstreams = os.path.join(exp_dir, "asr", "upstreams.json")
    if os.path.isfile(upstreams):  # which ASR names are upstreams (asr_model_path reads it)
        entries = [{"name": u["name"], "kind": u.get("kind"), "layers": u.get("layers"), "dims": u.get("dims")}
                   for u in read_json(upstreams)["upstreams"]]
        copier.write("asr/upstreams.json", json.dumps({"upstreams": entries}, indent=2) + "\n")
    transcript = (asr_model_path(exp_dir, spec.asr, names[0]) if spec.asr else None) or os.path.join(exp_dir, "asr", "model.pt")
    if os.path.isfile(transcript):
        copier.asr_model(transcript)
    # Decoding keys only: the stage files also hold the training run's paths and settings.
    for stage in ("asr", "adapt"):
        path = os.path.join(exp_dir, stage, "hyperparams.yaml")
        if os.path.isfile(path):
            values = stage_values(path)
            keys = {k: values[k] for k in DECODING_KEYS if isinstance(values.get(k), (int, float))}
            if keys:
                copier.write(f"{stage}/hyperparams.yaml", yaml.safe_dump(keys, sort_keys=False))
    dump = os.path.join(exp_dir, "dump", "hyperparams.yaml")
    dtype = stage_values(dump).get("dtype", "float16") if os.path.isfile(dump) else "float16"
    copier.write("dump/hyperparams.yaml", yaml.safe_dump({"dtype": dtype}))
    if spec.uses_handcrafted:
        copier.copy(os.path.join(exp_dir, "dump", "handcrafted_hparams.yaml"))
    copier.copy(os.path.join(exp_dir, "results.csv"))
    keys = {k: v for k, (v, _) in decoding_keys(exp_dir, transcript if os.path.isfile(transcript) else None).items()}
    results_md = os.path.join(exp_dir, "RESULTS.md")
    env = _environment(results_md)
    config = {"format": EXPORT_FORMAT, "export_id": uuid.uuid4().hex, "variant": variant, "spec": spec_dict, "type": spec.type, "asr": spec.asr or None,
              "layers": list(spec.layers) if spec.asr else [], "classes": classes, "folds": names, "run": run,
              "task": spec.task, "attributes": list(info.get("attributes") or []),
              "decoding": keys, "dtype": dtype, "config": _json_cell(row.get("config")), "git_commit": environment()["git_commit"],
              "trained_with": env}
    copier.write("hyperparams.yaml", hyperparams_yaml(config, blueprints, weights))
    copier.write(INTERFACE_FILE, INTERFACE_SOURCE)
    from ser_modules.inference.model_card import model_card

    copier.write("README.md", model_card(exp_dir, config, row))
    manifest = {"format": EXPORT_FORMAT, "export_id": config["export_id"], "variant": variant, "run": run,
                "files": {rel: sha256(os.path.join(work, rel)) for rel in sorted(copier.files)},
                "external": dict(sorted(copier.external.items()))}
    write_json(os.path.join(work, MANIFEST), manifest)
    for folder, _, names in os.walk(work):  # temporary files and folders are private: a shared folder is readable
        os.chmod(folder, 0o755)
        for name in names:
            os.chmod(os.path.join(folder, name), 0o644)
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty (checked above)
    os.replace(work, out_dir)
    return manifest


def _json_cell(value):
    try:
        return json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _environment(results_md: str) -> dict:
    """The environment row of the experiment's ``RESULTS.md`` (date, versions, git commit), if any."""
    if not os.path.isfile(results_md):
        return {}
    lines = open(results_md, encoding="utf-8").read().split("## Environment", 1)[-1].strip().splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    if len(table) < 3:
        return {}
    head = [c.strip() for c in table[0].strip("|").split("|")]
    values = [c.strip() for c in table[2].strip("|").split("|")]
    return dict(zip(head, values))
