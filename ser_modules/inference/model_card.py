"""The model card (``README.md``, Hugging Face layout) of an exported SER variant, from its experiment."""

from __future__ import annotations

import os

import pandas as pd

from ser_modules.utils.fileio import key_digest, read_optional_json


def _score(row: pd.Series, metric: str) -> str:
    return f"{row[f'{metric}_mean']:.3f} ± {row[f'{metric}_std']:.3f}"


def results_table(results: pd.DataFrame, variant: str) -> str:
    """The variant's UA/WA/F1 (mean ± std over folds x runs) with the reference rows (the handcrafted
    baseline and the classical reference, as stage 6 scored them) beside it."""
    rows = results[(results["model"] == variant) | results["type"].isin(["baseline", "reference"])]
    lines = ["| model | type | UA | WA | macro F1 | folds x runs | p (t-test, UA vs reference) |", "|---|---|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        name = f"**{r['model']}** (this model)" if r["model"] == variant else r["model"]
        p = "" if pd.isna(r.get("p_ttest_UA")) else f"{r['p_ttest_UA']:.2g}"
        lines.append(f"| {name} | {r['type']} | {_score(r, 'UA')} | {_score(r, 'WA')} | {_score(r, 'F1')} | "
                     f"{int(r['folds'])} x {int(r['runs'])} | {p} |")
    return "\n".join(lines)


def attribute_results_table(results: pd.DataFrame, variant: str, attributes: list[str]) -> str:
    """The variant's CCC per attribute (mean ± std over folds x runs) with the handcrafted and classical rows
    that predict attributes beside it."""
    columns = [f"CCC_{a}_mean" for a in attributes]
    if not attributes or not set(columns) <= set(results.columns):
        return ""
    rows = results[(results["model"] == variant) | (results["type"].isin(["baseline", "reference"])
                                                    & results[columns].notna().all(axis=1))]
    lines = ["| model | type | " + " | ".join(f"CCC {a}" for a in attributes) + " | folds x runs |",
             "|---|---|" + "---|" * len(attributes) + "---|"]
    for _, r in rows.iterrows():
        name = f"**{r['model']}** (this model)" if r["model"] == variant else r["model"]
        lines.append(f"| {name} | {r['type']} | " + " | ".join(_score(r, f"CCC_{a}") for a in attributes)
                     + f" | {int(r['folds'])} x {int(r['runs'])} |")
    return "\n".join(lines)


def model_card(exp_dir: str, config: dict, row: pd.Series) -> str:
    """Markdown with a YAML header (``tags``, ``datasets``, ``metrics``, ``model-index``) for ``config``
    (the export's) and its ``results.csv`` row."""
    prepared = read_optional_json(os.path.join(exp_dir, "data", "prepare_summary.json"))
    emotion = prepared.get("emotion", {})
    asr_data = read_optional_json(os.path.join(exp_dir, "data", "asr", "summary.json"))
    corpus = prepared.get("emotion_corpus") or emotion.get("corpus") or "unknown"
    language = emotion.get("language", "en")
    protocol = str(row.get("protocol", ""))
    results = pd.read_csv(os.path.join(exp_dir, "results.csv"))
    asr_corpora = sorted(asr_data.get("corpora", {}))
    asr_hours = asr_data.get("train", {}).get("hours")
    digest = key_digest(config.get("config"))
    env = config.get("trained_with", {})
    attributes = list(config.get("attributes") or [])
    has_classes = config.get("task", "categorical") != "dimensional"
    metrics = [{"type": "unweighted-accuracy", "value": round(float(row["UA_mean"]), 4)},
               {"type": "weighted-accuracy", "value": round(float(row["WA_mean"]), 4)},
               {"type": "f1", "value": round(float(row["F1_mean"]), 4)}] if has_classes else []
    metrics += [{"type": f"ccc-{a}", "value": round(float(row[f"CCC_{a}_mean"]), 4)} for a in attributes
                if f"CCC_{a}_mean" in row]
    header = {
        "language": [language],
        "license": "other",
        "library_name": "speechbrain",
        "tags": ["speech-emotion-recognition", "audio-classification", "speechbrain", "ser_modules",
                 f"ser-{config['type']}"],
        "datasets": [corpus] + asr_corpora,
        "metrics": [m["type"] for m in metrics],
        "model-index": [{"name": config["variant"], "results": [{
            "task": {"type": "audio-classification", "name": "Speech emotion recognition"},
            "dataset": {"name": corpus, "type": corpus, "split": protocol},
            "metrics": metrics}]}],
    }
    import yaml

    front = yaml.safe_dump(header, sort_keys=False, allow_unicode=True)
    asr = config.get("asr")
    if asr:
        front_end = (f"reads layer(s) {', '.join(config['layers'])} of the `{asr}` ASR model "
                     f"({'the same pretrained model in every fold' if asr == 'pretrained' else 'adapted per fold, without the fold’s test speakers'})"
                     + (f", trained on {', '.join(asr_corpora)} ({asr_hours} h)" if asr_corpora else ""))
    else:
        front_end = "reads no ASR layer (handcrafted or openSMILE features only)"
    transcripts = ("transcripts from the experiment's ASR model, decoded with "
                   + ", ".join(f"{k} {v}" for k, v in config.get("decoding", {}).items()))
    folds = ", ".join(config["folds"])
    outputs = "; ".join(([f"Classes: {', '.join(config['classes'])}"] if has_classes else [])
                        + ([f"attributes: {', '.join(attributes)} (in the corpus's rating scale)"] if attributes else []))
    limits = (f"Attributes ({', '.join(attributes)}) on {corpus}'s rating scale" if attributes else
              "Categorical classes only; no arousal/valence") + "."
    return f"""---
{front}---

# {config['variant']}: speech emotion recognition on {corpus}

A `{config['type']}` model that {front_end}. {outputs}. Exported by
`python -m ser_modules.export` from an experiment of this toolkit; {transcripts}.

## Use

```python
from ser_modules.infer import EmotionRecognizer
rec = EmotionRecognizer.from_pretrained("path/to/this/folder")
rows = rec.predict_files(["a.wav"])  # {'emotion, class probabilities, ' if has_classes else ''}{'attributes, ' if attributes else ''}transcript
```

```python
from speechbrain.inference.interfaces import foreign_class
rec = foreign_class(source="path/to/this/folder", pymodule_file="custom_interface.py",
                    classname="SpeechEmotionRecognizer")
rec.classify_file("a.wav")
```

or `python -m ser_modules.infer path/to/this/folder a.wav`. Nothing is downloaded; every file is
checked against `manifest.json` when the folder loads.

## Results

{corpus}, protocol `{protocol}` (leave-sessions/speakers-out folds; each fold's model tested on speakers
it never heard). Mean ± std over folds x runs, as stage 6 of the experiment scored them:

{results_table(results, config['variant']) if has_classes else ''}
{attribute_results_table(results, config['variant'], attributes)}

The model is the ensemble of the fold models {folds} (their class probabilities averaged).
Each fold model was trained on the other folds, so on the {corpus} recordings themselves the ensemble
has heard their speakers: use the table above, not a rerun on those files, for held-out scores.

## Training

- Emotion corpus: {corpus} ({language}), protocol `{protocol}`, {len(config['folds'])} fold model(s).
- ASR / front end: {front_end}.
- SER configuration digest: `{digest}` (the `config` entry of `hyperparams.yaml`).
- Code: git commit `{config.get('git_commit', 'unknown')}` at export; the experiment's RESULTS.md
  environment: {', '.join(f'{k} {v}' for k, v in env.items()) or 'not recorded'}.

## Intended use and limits

For research on speech emotion recognition. Trained on {'a small synthetic demo corpus (espeak-ng voices): a pipeline check, not a usable emotion model' if corpus == 'demo' else 'acted or elicited emotional speech of one corpus'}:
expect lower accuracy on spontaneous speech, other languages than {language}, other recording
conditions and other label sets. {limits} Do not use it to make decisions about people.
"""
