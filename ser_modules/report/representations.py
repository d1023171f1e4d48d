"""What stage 6 shows of the ASR layers themselves: t-SNE of mean-pooled layers coloured by emotion (Lakomkin
2018 Figure 4) and the unit most correlated with frame loudness (Figure 6)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ser_modules.data.datasets import read_utterance
from ser_modules.dump.store import FeatureStore
from ser_modules.report import plots


def tsne_plots(stores: dict, manifest: pd.DataFrame, hp: dict, plot_dir: str) -> list[str]:
    from sklearn.manifold import TSNE

    paths = []
    sample = manifest.sample(n=min(len(manifest), hp["tsne_max_utterances"]), random_state=hp["seed"])
    for key, info in stores.get("asr", {}).items():
        if info["model"] not in hp["tsne_models"] or (info["fold"] and info["fold"] != hp.get("tsne_fold", info["fold"])):
            continue
        store = FeatureStore(info["folder"])
        for layer in [lay for lay in hp["tsne_layers"] if lay in info["layers"]]:
            vectors = store.mean_pooled(layer, sample["ID"])
            emb = TSNE(n_components=2, init="pca", random_state=hp["seed"], perplexity=min(30, len(sample) - 1),
                       max_iter=500).fit_transform(vectors)
            name = key.replace("/", "_")
            paths.append(plots.plot_tsne(emb, sample["emotion"].tolist(), f"t-SNE of mean-pooled {layer} ({key})",
                                         os.path.join(plot_dir, f"tsne_{name}_{layer}.png")))
    return paths


def frame_loudness(wav: np.ndarray, n_frames: int) -> np.ndarray:
    """Loudness (dB RMS) of ``n_frames`` equal segments of a signal: one per representation frame."""
    edges = np.linspace(0, len(wav), n_frames + 1).astype(int)
    return np.array([20 * np.log10(np.sqrt(np.mean(wav[a:max(b, a + 1)] ** 2)) + 1e-6) for a, b in zip(edges[:-1], edges[1:])])


def loudness_analysis(stores: dict, utterances: pd.DataFrame, hp: dict, plot_dir: str) -> dict | None:
    """Pearson correlation of every unit of ``loudness_layer`` with frame loudness; plot the best unit."""
    info = next((i for i in stores.get("asr", {}).values()
                 if i["model"] == hp["loudness_model"] and hp["loudness_layer"] in i["layers"]), None)
    if info is None:
        return None
    store, layer = FeatureStore(info["folder"]), hp["loudness_layer"]
    rows = utterances.sample(n=min(len(utterances), hp["loudness_utterances"]), random_state=hp["seed"])
    acts, louds = [], []
    for _, r in rows.iterrows():
        act = store.get(r["ID"], layer)
        wav = read_utterance(r["wav"], r.get("seg_start", ""), r.get("seg_end", "")).numpy()
        acts.append(act)
        louds.append(frame_loudness(wav, act.shape[0]))
    a, lo = np.concatenate(acts), np.concatenate(louds)
    a_c, l_c = a - a.mean(0), lo - lo.mean()
    r = (a_c * l_c[:, None]).sum(0) / (np.sqrt((a_c**2).sum(0) * (l_c**2).sum()) + 1e-12)
    unit = int(np.nanargmax(np.abs(r)))
    per_utt = [np.corrcoef(x[:, unit], y)[0, 1] for x, y in zip(acts, louds) if len(y) > 2 and x[:, unit].std() > 0]
    mean_r = float(np.nanmean(per_utt))
    examples = [(rows.iloc[i]["ID"], acts[i][:, unit], louds[i]) for i in range(min(2, len(acts)))]
    path = plots.plot_loudness(examples, unit, layer, mean_r, os.path.join(plot_dir, f"loudness_{layer}.png"))
    return {"layer": layer, "unit": unit, "pooled_r": float(r[unit]), "mean_utterance_r": mean_r,
            "utterances": len(rows), "units_abs_r_over_0.5": int((np.abs(r) > 0.5).sum()), "plot": path}
