"""Stage 6's report: result rows of the trained variants, the tables of the papers (model families,
ASR adaptation, listener size), the figures (confusion matrices, UA per layer, t-SNE, loudness) and
the text of ``RESULTS.md``.

:mod:`ser_modules.ser.metrics` computes the metrics and tests, :mod:`ser_modules.report.plots` draws the
figures and :mod:`ser_modules.report.upstream` adds the upstreams' tables; this module puts them together,
step by step on a :class:`Report` (:func:`read_report`, :func:`score_variants`,
:func:`report_figures`, :func:`results_markdown`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ser_modules.asr.saved_models import adapted_upstream_entry, upstream_entries
from ser_modules.data.corpus import language_mismatch
from ser_modules.data.eval_corpora import listed_eval_corpora
from ser_modules.data.folds import load_folds
from ser_modules.dump.corpus_dump import read_stores
from ser_modules.report import plots
from ser_modules.report.representations import loudness_analysis, tsne_plots
from ser_modules.report.attributes import (
    attribute_section,
    attribute_summary,
    resolve_attribute_reference,
)
from ser_modules.report.cross_corpus import cross_corpus_figures, cross_corpus_rows, cross_corpus_section
from ser_modules.report.formatting import config_json, data_section, fmt, fmt_p, markdown_table
from ser_modules.report.upstream import upstream_report, upstream_table
from ser_modules.ser.metrics import (
    METRICS,
    chance_scores,
    load_predictions,
    normalized_confusion,
    paired_tests,
    per_fold_run,
    per_fold_run_attributes,
    predicted_attributes,
    summarize,
    summarize_attributes,
)
from ser_modules.ser.probe import expand_variants, layer_index, resolve_reference
from ser_modules.ser.variants import VariantSpec, planned_pairs, variant_runs
from ser_modules.utils.environment import environment
from ser_modules.utils.fileio import ManifestError, read_json, read_manifest, read_optional_json


def variant_rows(ser_dir: str, variants: list[dict], classes: list[str], reference: str, hp_ser: dict, log,
                 planned: dict[str, int] | None = None, allow_incomplete: bool = False,
                 attribute_reference: str | None = None) -> tuple:
    """Result rows of the trained variants, each from its first ``n_runs`` runs per fold (its own or the
    config's). A variant with predictions of fewer than its ``planned`` (fold, run) pairs
    (:func:`~ser_modules.ser.variants.planned_pairs`) is refused (:class:`ManifestError`), or with
    ``allow_incomplete`` scored and flagged (``complete`` False). Class metrics (UA, WA, F1; p-values
    against ``reference``) of variants with classes, attribute metrics (``CCC_<attribute>``, r, RMSE; p-values
    against ``attribute_reference``) of variants with attributes; NaN where a variant has none."""
    scores, attribute_scores, rows, preds = {}, {}, [], {}
    for v in variants:
        spec = VariantSpec.from_dict(v)
        try:
            preds[spec.name] = load_predictions(ser_dir, spec.name, variant_runs(v, hp_ser["n_runs"]))
        except Exception as err:  # a variant not trained (yet): reported, the others still scored
            log.warning("%s", err)
            continue
        if spec.predicts_classes:
            scores[spec.name] = per_fold_run(preds[spec.name], classes)
        if predicted_attributes(preds[spec.name]):
            attribute_scores[spec.name] = per_fold_run_attributes(preds[spec.name])
        pairs = preds[spec.name].groupby(["fold", "run"]).ngroups
        wanted = (planned or {}).get(spec.name, 0)
        if pairs < wanted:
            message = (f"{os.path.join(ser_dir, spec.name)}: predictions of {pairs} of the {wanted} "
                       "planned (fold, run) pairs")
            if not allow_incomplete:
                raise ManifestError(f"{message}: finish stage 5, or score it marked as incomplete with "
                                    "score.allow_incomplete=True")
            log.warning("%s: scored and marked as incomplete (score.allow_incomplete)", message)
    if reference not in scores and scores:
        log.warning("reference model %r has no predictions: no significance tests", reference)
    for v in variants:
        spec = VariantSpec.from_dict(v)
        if spec.name not in preds:
            continue
        row = {"model": spec.name, "type": spec.type, "asr": spec.asr or "", "layer": spec.layer or ""}
        if spec.name in scores:
            s = summarize(scores[spec.name])
            tests = paired_tests(scores[spec.name], scores[reference]) if reference in scores and spec.name != reference \
                else {}
            row.update({k: round(v_, 4) for k, v_ in s.items() if k not in ("folds", "runs")})
        else:
            s, tests = summarize_attributes(attribute_scores[spec.name]), {}
            row.update({f"{m}_{x}": np.nan for m in METRICS for x in ("mean", "std")})
        pairs = preds[spec.name].groupby(["fold", "run"]).ngroups
        row.update({"folds": s["folds"], "runs": s["runs"], "complete": pairs >= (planned or {}).get(spec.name, 0),
                    "p_ttest_UA": tests.get("p_ttest", np.nan), "p_wilcoxon_UA": tests.get("p_wilcoxon", np.nan),
                    "config": config_json(v, hp_ser)})
        if spec.name in attribute_scores:
            row.update(attribute_summary(spec.name, attribute_scores, attribute_reference))
        rows.append(row)
    return pd.DataFrame(rows), scores, preds


FAMILIES = {"baseline": "Baseline", "mp": "Fine-tuning MP", "rnn": "Fine-tuning RNN", "progressive": "Progressive net",
            "iaan": "IAAN", "weighted": "Weighted layer sum (SUPERB)", "reference": "Classical reference"}


def class_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The result rows with class metrics (not those of variants that predict attributes only)."""
    return results[results["UA_mean"].notna()] if len(results) else results


def family_table(results: pd.DataFrame, chance: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The SER table in the layout of Lakomkin 2018 Table 1: chance rows, then the models grouped by
    family (configuration order within a family), the best mean per metric in bold."""
    rows = []
    for name, frame in chance.items():
        s = summarize(frame)
        rows.append({"Family": "Chance" if not rows else "", "Model": name,
                     **{m: fmt(s[f"{m}_mean"], s[f"{m}_std"]) for m in METRICS},
                     "folds × runs": f"{s['folds']} × {s['runs']}", "p (t-test)": "", "p (Wilcoxon)": ""})
    results = class_rows(results)
    if not len(results):
        return pd.DataFrame(rows)
    best = {m: results[f"{m}_mean"].max() for m in METRICS}
    order = {t: i for i, t in enumerate(FAMILIES)}
    ranked = results.assign(_family=results["type"].map(lambda t: order.get(t, len(order))),
                            _row=range(len(results))).sort_values(["_family", "_row"])
    previous = None
    for _, r in ranked.iterrows():
        cells = {}
        for m in METRICS:
            text = fmt(r[f"{m}_mean"], r[f"{m}_std"])
            cells[m] = f"**{text}**" if np.isclose(r[f"{m}_mean"], best[m]) else text
        family = FAMILIES.get(r["type"], r["type"])
        model = r["model"] if r.get("complete", True) else f"**{r['model']} (incomplete)**"
        rows.append({"Family": family if family != previous else "", "Model": model, **cells,
                     "folds × runs": f"{r['folds']} × {r['runs']}", "p (t-test)": fmt_p(r["p_ttest_UA"]),
                     "p (Wilcoxon)": fmt_p(r["p_wilcoxon_UA"])})
        previous = family
    return pd.DataFrame(rows)


def adaptation_table(asr_results: pd.DataFrame, results: pd.DataFrame, corpus: str, scheme: str) -> pd.DataFrame:
    """Yeh 2020 Tables 1-2: per ASR model and adaptation stage, WER on the emotion corpus next to
    the UA/WA of the SER models reading that model's layers."""
    rows = []
    emo = asr_results[(asr_results["corpus"] == corpus) & (asr_results["split"] == f"test:{scheme}")]
    results = class_rows(results)
    for _, r in emo.iterrows():  # one row per ASR model, adaptation stage and decoder (stage 3's decoders)
        asr = r["stage"]
        ser = results[results["asr"] == asr] if len(results) else results
        layers = ser["layer"].tolist() if len(ser) else []
        if not layers:
            rows.append({"ASR model": asr, "decoder": r["decoder"], "WER": r["WER"], "CER": r["CER"], "SER model": "",
                         "layer": "", "UA": "", "WA": ""})
        for _, s in ser.iterrows():
            rows.append({"ASR model": asr, "decoder": r["decoder"], "WER": r["WER"], "CER": r["CER"], "SER model": s["model"],
                         "layer": s["layer"], "UA": fmt(s["UA_mean"], s["UA_std"]), "WA": fmt(s["WA_mean"], s["WA_std"])})
    return pd.DataFrame(rows)


def listener_size_table(exp_dir: str) -> pd.DataFrame:
    """Yeh 2020, section 2.4: parameters of the listener FC layers and of the whole LAS, pretrained
    vs each adapted variant (one fold's model: every fold has the same shape). Empty for non-LAS."""
    from ser_modules.asr.saved_models import list_asr_models, load_asr_model
    from ser_modules.models.lowrank import listener_size

    rows, seen = [], set()
    for ref in list_asr_models(exp_dir):
        if ref.name in seen:
            continue
        seen.add(ref.name)
        model = load_asr_model(ref.path)[0]
        if not hasattr(model, "listener"):
            return pd.DataFrame()
        rows.append({"ASR model": ref.name, **listener_size(model)})
    if not rows or rows[0]["ASR model"] != "pretrained":
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    table["listener FC vs pretrained"] = [f"{100 * (r - base['listener_fc']) / base['listener_fc']:+.1f}%"
                                          for r in table["listener_fc"]]
    table["model vs pretrained"] = [f"{100 * (r - base['model']) / base['model']:+.1f}%" for r in table["model"]]
    table["rank"] = [str(r) if r else "full" for r in table["rank"]]
    return table.rename(columns={"listener_fc": "listener FC parameters", "listener": "listener parameters",
                                 "model": "model parameters"})


def notes_section(exp_dir: str, prepared: dict, skipped_variants: dict[str, str]) -> list[str]:
    """RESULTS.md lines on what the corpus lacked (transcripts, dialog context) and how to read its WER."""
    notes = []
    mismatch = language_mismatch(prepared)
    if mismatch:
        notes.append(mismatch[0].upper() + mismatch[1:] + ".")
    adapt = read_optional_json(os.path.join(exp_dir, "adapt", "summary.json"))
    if adapt.get("skipped"):
        notes.append("Stage 3 scored no WER on the emotion corpus" + (" and adapted no ASR model" if
                     adapt.get("adaptation_skipped") else "") + f": {adapt['skipped']}.")
    elif adapt.get("adaptation_skipped"):
        notes.append(f"Stage 3 adapted no ASR model: {adapt['adaptation_skipped']}.")
    notes += [f"`{name}` was not trained: {reason}." for name, reason in skipped_variants.items()]
    return ["## Notes", "", *[f"- {n}" for n in notes], ""] if notes else []


@dataclass
class Report:
    """What stage 6 reads (the emotion corpus of one protocol and fold scheme) and works out, step by step."""

    exp_dir: str
    protocol: str
    scheme: str
    manifest: pd.DataFrame
    folds: list
    classes: list[str]
    prepared: dict
    skipped: dict = field(default_factory=dict)  # variants stage 5 did not train, with the reason
    upstreams: list[dict] = field(default_factory=list)
    trained: list[dict] = field(default_factory=list)
    runs: dict = field(default_factory=dict)  # runs per fold of each trained variant (its own n_runs or the config's)
    reference: str = ""
    attribute_reference: str | None = None  # the row the attribute p-values compare against
    results: pd.DataFrame = field(default_factory=pd.DataFrame)
    preds: dict = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    weights: pd.DataFrame = field(default_factory=pd.DataFrame)
    loud: dict | None = None
    eval_corpora: list[dict] = field(default_factory=list)  # stage 1's evaluation corpora (cross-corpus)
    cross: pd.DataFrame = field(default_factory=pd.DataFrame)  # cross_corpus.csv

    @property
    def corpus(self) -> str:
        return self.prepared["emotion_corpus"]


def read_report(exp_dir: str, data_dir: str, protocol: str, scheme: str) -> Report:
    """A :class:`Report` of the stage-1 outputs: manifest, folds and classes of the protocol, prepare summary."""
    emotion = os.path.join(data_dir, "emotion", protocol)
    manifest = read_manifest(os.path.join(emotion, "manifest.csv"), ("ID", "speaker", "emotion"))
    folds = load_folds(os.path.join(emotion, f"folds_{scheme}.json"))
    classes = sorted(manifest["emotion"].unique())
    prepared = read_json(os.path.join(data_dir, "prepare_summary.json"))
    return Report(exp_dir, protocol, scheme, manifest, folds, classes, prepared)


def score_variants(rep: Report, hp: dict, hp_ser: dict, log) -> pd.DataFrame:
    """The result rows (``results.csv``) of the variants of conf/ser.yaml that stage 5 trained; upstream
    templates expand to one variant per layer (of each upstream, and of the CTC-adapted one)."""
    ser_dir = os.path.join(rep.exp_dir, "ser")
    rep.skipped = read_optional_json(os.path.join(ser_dir, "summary.json")).get("skipped", {})
    rep.upstreams = upstream_entries(rep.exp_dir)
    variants = expand_variants(hp_ser["variants"], rep.upstreams, adapted_upstream_entry(rep.exp_dir))
    rep.trained = [v for v in variants if VariantSpec.from_dict(v).name not in rep.skipped]
    categorical = [v for v in rep.trained if VariantSpec.from_dict(v).predicts_classes]
    rep.reference = resolve_reference(hp["reference"], [v["name"] for v in categorical]) if categorical else ""
    rep.attribute_reference = resolve_attribute_reference(hp.get("attribute_reference"), rep.reference, rep.trained)
    rep.runs = {v["name"]: variant_runs(v, hp_ser["n_runs"]) for v in rep.trained}
    rep.results, _, rep.preds = variant_rows(ser_dir, rep.trained, rep.classes, rep.reference, hp_ser, log,
                                             planned_pairs(rep.trained, len(rep.folds), hp_ser["n_runs"]),
                                             hp.get("allow_incomplete", False), rep.attribute_reference)
    rep.results.insert(4, "protocol", f"{rep.protocol}/{rep.scheme}")
    return rep.results


def score_cross_corpus(rep: Report, data_dir: str, hp: dict, hp_ser: dict, log) -> pd.DataFrame:
    """The rows of ``cross_corpus.csv``: the trained variants on each evaluation corpus (empty without one)."""
    rep.eval_corpora = listed_eval_corpora(data_dir)
    rep.cross = cross_corpus_rows(rep.exp_dir, rep.eval_corpora, rep.results, rep.classes, data_dir,
                                  planned_pairs(rep.trained, len(rep.folds), hp_ser["n_runs"]),
                                  hp.get("allow_incomplete", False), log, rep.runs) \
        if len(rep.results) and rep.eval_corpora else pd.DataFrame()
    return rep.cross


def report_figures(rep: Report, hp: dict) -> list[str]:
    """Draw the figures into ``<exp>/plots``: confusion matrices, UA per layer, the upstreams' figures,
    t-SNE and loudness (conf/score.yaml ``tsne``, ``loudness``); returns their paths."""
    plot_dir, results = os.path.join(rep.exp_dir, "plots"), class_rows(rep.results)
    # Confusion matrices averaged over folds and runs (Lakomkin Figure 5); predicted vs true attributes.
    for name, frame in rep.preds.items():
        attributes = predicted_attributes(frame)
        if attributes:
            rep.figures.append(plots.plot_attribute_scatter(frame, attributes, name,
                                                            os.path.join(plot_dir, f"attributes_{name}.png")))
        if "predicted" not in frame.columns:
            continue
        mats = [normalized_confusion(g["true"], g["predicted"], rep.classes) for _, g in frame.groupby(["fold", "run"])]
        rep.figures.append(plots.plot_confusion(np.mean(mats, axis=0), rep.classes,
                                                f"{name} ({len(mats)} folds x runs)",
                                                os.path.join(plot_dir, f"confusion_{name}.png")))
    if len(rep.cross) or os.path.isdir(plot_dir):  # per evaluation corpus: the best variant's fold ensemble
        rep.figures += cross_corpus_figures(rep.exp_dir, rep.eval_corpora, rep.cross, rep.classes, plot_dir,
                                            rep.runs)
    # UA per layer, one line per model family reading the ASR (Yeh Table 2 / Lakomkin Table 1).
    series = {}
    per_layer = results[(results["layer"] != "") & (results["type"] != "weighted")] if len(results) else results
    for (typ, asr), g in per_layer.groupby(["type", "asr"]) if len(per_layer) and not rep.upstreams else []:
        g = g.assign(_k=g["layer"].map(layer_index)).sort_values(["_k", "layer"])
        series[f"{typ} ({asr})"] = (g["layer"].tolist(), g["UA_mean"].tolist(), g["UA_std"].tolist())
    if series:
        rep.figures.append(plots.plot_layer_scores(series, os.path.join(plot_dir, "ua_per_layer.png")))
    # Upstreams: UA per layer per upstream, the weighted sum as a line, and its learned layer weights.
    upstream_figures, rep.weights = upstream_report(results, rep.trained, rep.upstreams,
                                                    os.path.join(rep.exp_dir, "ser"), plot_dir)
    rep.figures += upstream_figures
    stores_path = os.path.join(rep.exp_dir, "dump", f"stores_{rep.protocol}.json")
    stores = read_stores(stores_path) if os.path.isfile(stores_path) else {}
    rep.figures += tsne_plots(stores, rep.manifest, hp, plot_dir) if stores and hp["tsne"] else []
    if stores and hp["loudness"]:
        rep.loud = loudness_analysis(stores, read_manifest(stores["utterances"]), hp, plot_dir)
        if rep.loud:
            rep.figures.append(rep.loud["plot"])
    return rep.figures


def results_markdown(rep: Report, hp: dict, seed: int) -> str:
    """The text of ``RESULTS.md``."""
    asr_path = os.path.join(rep.exp_dir, "asr_results.csv")
    asr_results = pd.read_csv(asr_path, keep_default_na=False) if os.path.isfile(asr_path) else pd.DataFrame()
    env = environment()
    chance = chance_scores(rep.manifest, rep.folds, rep.classes, hp["chance_runs"], seed)
    results, corpus, scheme, loud = rep.results, rep.corpus, rep.scheme, rep.loud
    md = [f"# Results: {os.path.basename(rep.exp_dir.rstrip('/'))}", "",
          f"Emotion corpus **{corpus}**, protocol **{rep.protocol}**, folds **{scheme}** ({len(rep.folds)} folds), "
          f"classes {', '.join(rep.classes)}, {len(rep.manifest)} utterances. Generated by stage 6 from stored "
          "predictions.", "",
          *notes_section(rep.exp_dir, rep.prepared, rep.skipped),
          "## Environment", "", markdown_table(pd.DataFrame([env])), "",
          *data_section(rep.prepared),
          "## Speech emotion recognition", "",
          f"Mean ± std over folds × runs; p-values of a paired t-test and a Wilcoxon signed-rank test of UA "
          f"against **{rep.reference}** over the same (fold, run) pairs.", ""]
    md += [markdown_table(family_table(results, chance)), "",
           "Rows grouped by model family as in Table 1 of Lakomkin et al. 2018; the best mean of each column "
           "(chance rows excluded) in bold.", ""]
    md += attribute_section(results, rep.manifest, rep.folds, rep.attribute_reference)
    md += cross_corpus_section(rep.cross, rep.eval_corpora, rep.prepared, rep.trained, corpus)
    if rep.upstreams:
        md += ["## Upstreams (stage 2)", "", "The pretrained encoders probed, frozen; layer0 is the encoder's input "
               "(the CNN features), layerK the output of block K.", "", markdown_table(upstream_table(rep.upstreams)),
               ""]
    if len(rep.weights):
        md += ["## Learned layer weights", "", "Softmax weights of the weighted-sum variants (SUPERB), mean over "
               "folds × runs, and their entropy (mean ± std over folds × runs) next to that of uniform weights "
               "(ln of the number of layers): a ratio near 1 means the weights stayed near uniform, a low one that "
               "a few layers dominate.", "", markdown_table(rep.weights), ""]
    if len(asr_results):
        md += ["## Speech recognition", "", markdown_table(asr_results.drop(columns=["checkpoint"])), ""]
        adapt = adaptation_table(asr_results, results, corpus, scheme)
        if len(adapt):
            md += ["## ASR adaptation and SER (Yeh 2020, Tables 1-2)", "",
                   f"WER/CER on {corpus} ({scheme} folds pooled; each test utterance decoded by the model adapted "
                   "without its speakers) "
                   "next to the SER scores on that model's layers.", "", markdown_table(adapt), ""]
        sizes = listener_size_table(rep.exp_dir)
        if len(sizes) > 1:
            md += ["## Listener size (Yeh 2020, section 2.4)", "",
                   "Parameters of the listener FC layers (the FC after each pyramidal BLSTM, the layers the SVD "
                   "factorises) and of the whole LAS; adapted models counted on one fold's model.", "",
                   markdown_table(sizes), ""]
    if loud:
        md += ["## ASR units and loudness (Lakomkin 2018, Figure 6)", "",
               f"Unit {loud['unit']} of {loud['layer']} correlates most with frame loudness: Pearson r = "
               f"{loud['pooled_r']:.2f} over all frames, {loud['mean_utterance_r']:.2f} on average per utterance "
               f"({loud['utterances']} utterances); {loud['units_abs_r_over_0.5']} units have |r| > 0.5.", ""]
    md += ["## Figures", ""] + [f"- [{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in rep.figures] + [""]
    md += ["## Configurations", "", "The exact configuration of each row (variant and training hparams):", ""]
    md += [f"- `{r['model']}`: `{r['config']}`" for _, r in results.iterrows()] + [""]
    return "\n".join(md)


def print_scores(results: pd.DataFrame) -> None:
    """One line per variant on the console: UA, WA, F1 (mean ± std) and the t-test's p, and/or the CCC of
    each attribute."""
    for _, r in results.iterrows():
        line = f"stage 6 {r['model']:<28}"
        if not pd.isna(r["UA_mean"]):
            line += (f" UA {fmt(r['UA_mean'], r['UA_std'])}  WA {fmt(r['WA_mean'], r['WA_std'])}  "
                     f"F1 {fmt(r['F1_mean'], r['F1_std'])}  p {fmt_p(r['p_ttest_UA'])}")
        for column in [c for c in results.columns if c.startswith("CCC_") and c.endswith("_mean")]:
            if not pd.isna(r[column]):
                line += f"  CCC {column[4:-5]} {fmt(r[column], r[column[:-5] + '_std'])}"
        print(line)
