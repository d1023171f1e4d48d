"""Loading a recipe stage's HyperPyYAML hparams with the demo layer and command-line overrides.

A recipe's ``conf/<stage>.yaml`` holds the paper's configuration; ``conf/demo/<stage>.yaml`` lists
only the keys the demo changes (sizes, epochs; a few documented demo-only learning rates). Values
are layered, later wins:

    conf/<stage>.yaml  <  conf/demo/<stage>.yaml (--size demo)  <  runner values  <  key=value

A ``key=value`` from ``run.sh`` applies to every stage whose file has ``key``; ``<stage>.key=value``
(``asr.``, ``adapt.``, ``dump.``, ``ser.``, ``score.``) targets one stage. A key that no stage file has is
an error, so a typo never goes unnoticed, and so is a value whose type differs from the stage file's
(``ser.lr=abc`` where ``lr: 0.0001``): ``run.sh`` checks every override before any stage runs.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys

import yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references

from ser_modules.utils.legacy_paths import legacy_text

STAGE_FILES = ("asr", "adapt", "dump", "ser", "score")
_TOP_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:")


class HparamsError(ValueError):
    """A configuration file or override is wrong; the message names the file or key."""


def top_level_keys(path: str) -> set[str]:
    """Top-level keys of a (Hyper)YAML file, read without resolving tags."""
    with open(path, encoding="utf-8") as f:
        return {m.group(1) for line in f if (m := _TOP_KEY.match(line))}


class _Tagged:
    """A HyperPyYAML value built by a tag (``!new:``, ``!ref``, ``!PLACEHOLDER``): no plain type to check."""


_TAGGED = _Tagged()


class _TagTolerantLoader(yaml.SafeLoader):
    pass


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: _TAGGED)


def stage_values(path: str) -> dict:
    """Top-level values of a HyperPyYAML file as plain YAML (tagged values are opaque)."""
    with open(path, encoding="utf-8") as f:
        try:
            return yaml.load(f, Loader=_TagTolerantLoader) or {}
        except yaml.YAMLError as err:
            raise HparamsError(f"{path}: not valid YAML ({err})") from err


_KINDS = ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "a list"),
          (dict, "a mapping"), (type(None), "null"))


def _kind(value) -> str:
    return next((name for t, name in _KINDS if isinstance(value, t)), type(value).__name__)


def check_value_type(path: str, name: str, value, default) -> None:
    """Raise :class:`HparamsError` when the value of override ``name`` (``key`` or ``stage.key``) does
    not have the type of the stage file's ``default`` (an integer key takes integers, a number key any number, and so on)."""
    if isinstance(default, _Tagged) or default is None:
        return  # built by a tag, or null: any value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        key = name.split(".", 1)[-1] if name.split(".", 1)[0] in STAGE_FILES else name
        raise HparamsError(f"override {name}={value!r}: {path} has {key}: {default!r} ({_kind(default)}), "
                           f"the override is {_kind(value)}")


def parse_overrides(items: list[str]) -> list[tuple[str | None, str, object]]:
    """``["ser.lr=1e-3", "seed=3"]`` -> ``[("ser", "lr", 0.001), (None, "seed", 3)]``."""
    parsed = []
    for item in items:
        if "=" not in item:
            raise HparamsError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        stage = None
        if "." in key:
            stage, key = key.split(".", 1)
            if stage not in STAGE_FILES:
                raise HparamsError(f"override {item!r}: unknown stage prefix {stage!r} (one of {STAGE_FILES})")
        try:
            parsed.append((stage, key, yaml.safe_load(value) if value != "" else ""))
        except yaml.YAMLError as err:
            raise HparamsError(f"override {item!r}: value is not valid YAML ({err})") from err
    return parsed


def stage_file(conf_dir: str, stage: str) -> str:
    return os.path.join(conf_dir, f"{stage}.yaml")


def check_overrides(conf_dir: str, items: list[str]) -> None:
    """Raise :class:`HparamsError` for an override that no stage file of ``conf_dir`` has, or whose
    value has another type than the stage file's value (:func:`check_value_type`)."""
    keys = {s: top_level_keys(stage_file(conf_dir, s)) for s in STAGE_FILES if os.path.isfile(stage_file(conf_dir, s))}
    values = {s: stage_values(stage_file(conf_dir, s)) for s in keys}
    for stage, key, value in parse_overrides(items):
        if stage is not None:
            if stage not in keys:
                raise HparamsError(f"override {stage}.{key}: {conf_dir} has no {stage}.yaml")
            if key not in keys[stage]:
                raise HparamsError(f"override {stage}.{key}: {stage_file(conf_dir, stage)} has no key {key!r}")
        elif not any(key in k for k in keys.values()):
            raise HparamsError(f"override {key}: no stage file in {conf_dir} has this key ({', '.join(sorted(keys))}.yaml)")
        for s in [stage] if stage else [s for s in keys if key in keys[s]]:
            check_value_type(stage_file(conf_dir, s), f"{s}.{key}" if stage else key, value, values[s].get(key))


def layered_overrides(conf_dir: str, stage: str, size: str, runner: dict | None, items: list[str]) -> dict:
    """The override dict for one stage file, from the demo layer, runner values and ``key=value``."""
    path = stage_file(conf_dir, stage)
    if not os.path.isfile(path):
        raise HparamsError(f"{path}: hparams file not found")
    keys = top_level_keys(path)
    merged: dict = {}
    demo_path = os.path.join(conf_dir, "demo", f"{stage}.yaml")
    if size == "demo" and os.path.isfile(demo_path):
        with open(demo_path, encoding="utf-8") as f:
            demo = yaml.safe_load(f) or {}
        unknown = set(demo) - keys
        if unknown:
            raise HparamsError(f"{demo_path}: keys {sorted(unknown)} are not in {path}")
        merged.update(demo)
    merged.update({k: v for k, v in (runner or {}).items() if k in keys})
    values = None
    for s, key, value in parse_overrides(items):
        if (s is None and key in keys) or s == stage:
            values = stage_values(path) if values is None else values
            check_value_type(path, f"{s}.{key}" if s else key, value, values.get(key))
            merged[key] = value
    return merged


def load_stage_hparams(conf_dir: str, stage: str, size: str = "paper", runner: dict | None = None,
                       items: list[str] | None = None) -> tuple[dict, str]:
    """Load ``conf_dir/<stage>.yaml`` with all layers; return ``(hparams, resolved_yaml_text)``.

    The resolved text (references replaced, tags kept) is what the stage saves beside its outputs
    as the exact configuration it ran with.
    """
    path = stage_file(conf_dir, stage)
    overrides = layered_overrides(conf_dir, stage, size, runner, items or [])
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        hparams = load_hyperpyyaml(text, overrides)
        resolved = resolve_references(io.StringIO(text), overrides).getvalue()
    except Exception as err:
        raise HparamsError(f"{path}: cannot load hparams with overrides {overrides} ({err})") from err
    return hparams, resolved


def canonical_config(resolved: str, exp_dir: str, drop: tuple[str, ...] = ()) -> str:
    """The resolved YAML as compared between runs: top-level keys in ``drop`` removed (with their
    block lists and wrapped lines), the experiment folder replaced by ``<exp>`` (a moved experiment
    is the same run), moved classes named by their former paths and whitespace collapsed (the dumper wraps
    long paths)."""
    top_key = re.compile(r"^([A-Za-z_][\w.]*):")
    kept, skipping = [], False
    for line in resolved.splitlines():
        if line and not line[0].isspace() and not line.startswith("- "):
            match = top_key.match(line)
            skipping = bool(match and match.group(1) in drop)
        if not skipping:
            kept.append(line)
    text = "\n".join(kept)
    text = text.replace(os.path.abspath(exp_dir), "<exp>").replace(exp_dir, "<exp>")
    text = legacy_text(text)  # classes named by their paths before the package split: older runs stay finished
    return " ".join(text.split())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Check key=value overrides against a recipe's conf folder")
    parser.add_argument("command", choices=["check"])
    parser.add_argument("--conf-dir", required=True)
    parser.add_argument("overrides", nargs="*", help="key=value items (after --)")
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--"]
    args = parser.parse_intermixed_args(argv)
    try:
        check_overrides(args.conf_dir, args.overrides)
    except HparamsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
