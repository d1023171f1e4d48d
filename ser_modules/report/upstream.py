"""Stage 6 of upstream_probe: the table of the probed upstreams, UA per layer, and the learned layer
weights of the weighted sums (per fold, and their entropy against the uniform weighting's).
"""

from __future__ import annotations

from ser_modules.ser.probe import layer_index
from ser_modules.utils.fileio import ManifestError

# ----------------------------------------------------------------------------------------------
# Stage 6: the upstream tables and figures


def upstream_table(upstreams: list[dict]):
    """One row per described upstream (``asr/upstreams.json``): what was probed."""
    import pandas as pd

    return pd.DataFrame([{"upstream": u["name"], "model": u["model_type"],
                          "format": u["kind"] + (f" ({u['arch']['bundle']})" if (u.get("arch") or {}).get("bundle") else ""),
                          "layers": f"{u['n_layers']} + input (layer0..layer{len(u['layers']) - 1})",
                          "dim": u["dims"][u["layers"][-1]], "frames/s": u["frame_rate_hz"],
                          "parameters (M)": round(u["parameters"] / 1e6, 3), "SHA-1": u["sha1"][:12], "source": u["source"]}
                         for u in upstreams])


def learned_layer_weights(ser_dir: str, variant: dict, runs: int | None = None) -> tuple[list[str], "np.ndarray"]:
    """``(layers, weights [folds x runs, layers])``: a weighted variant's learned layer weights, one row
    per run (``layer_weights.json`` written by stage 5 beside each run's model; its first ``runs`` per fold,
    :func:`~ser_modules.ser.metrics.kept_run`), folds in name order."""
    import glob
    import os

    import numpy as np

    from ser_modules.ser.metrics import kept_run
    from ser_modules.utils.fileio import read_json

    paths = sorted(glob.glob(os.path.join(ser_dir, variant["name"], "*", "run*", "layer_weights.json")))
    runs = [read_json(p) for p in paths if kept_run(os.path.basename(os.path.dirname(p)), runs)]
    if not runs:
        raise ManifestError(f"{os.path.join(ser_dir, variant['name'])}: no layer_weights.json (rerun stage 5)")
    layers = list(runs[0])
    return layers, np.array([[r[n] for n in layers] for r in runs])


def weight_entropy(weights) -> "np.ndarray":
    """Entropy (nats) of each row of softmax weights ``[runs, layers]``: ``ln(layers)`` when uniform, 0
    when one layer takes all."""
    import numpy as np

    w = np.clip(np.asarray(weights, dtype=float), 1e-12, None)
    return -(w * np.log(w)).sum(axis=-1)


def upstream_report(results, variants: list[dict], upstreams: list[dict], ser_dir: str, plot_dir: str):
    """Per upstream: a UA-per-layer figure (one line per head, the weighted variants and the eGeMAPS
    reference as horizontal lines) and a figure of the learned layer weights per fold; the weights table
    gives each weighted variant's mean weights and their entropy next to the uniform weighting's
    (``ln(layers)``: a ratio near 1 means the weights did not learn). Returns ``(figure paths, weights table)``."""
    import os

    import numpy as np
    import pandas as pd

    from ser_modules.report import plots

    figures, rows = [], []
    by_name = {v["name"]: v for v in variants}
    for up in upstreams:
        mine = results[results["asr"] == up["name"]] if len(results) else results
        if not len(mine):
            continue
        series = {}
        # fine-tuned tops read a stored layer but score the blocks above it: lines, not points of a layer
        finetuned = mine["model"].map(lambda n: bool(by_name.get(n, {}).get("finetune_blocks")))
        for typ, g in mine[(mine["type"] != "weighted") & ~finetuned].groupby("type"):
            g = g.assign(_k=g["layer"].map(layer_index)).sort_values("_k")
            series[typ] = (g["layer"].tolist(), g["UA_mean"].tolist(), g["UA_std"].tolist())
        weighted = mine[mine["type"] == "weighted"]
        as_lines = mine[finetuned | (mine["type"] == "weighted")]
        lines = dict(zip(as_lines["model"], as_lines["UA_mean"]))
        reference = results[results["type"] == "reference"]  # handcrafted features: the same for every upstream
        lines.update({f"{n} (reference)": ua for n, ua in zip(reference["model"], reference["UA_mean"])})
        if series:
            figures.append(plots.plot_layer_scores(series, os.path.join(plot_dir, f"ua_per_layer_{up['name']}.png"),
                                                   lines=lines, title=f"{up['name']} ({up['model_type']})"))
        curves = {}
        for name in weighted["model"]:
            # the runs stage 6 scored (a table without the column: every run on disk)
            runs = int(weighted.set_index("model").at[name, "runs"]) if "runs" in weighted.columns else None
            layers, values = learned_layer_weights(ser_dir, by_name[name], runs)
            curves[name] = (layers, values)
            entropy = weight_entropy(values)
            rows.append({"model": name, **{n: f"{m:.3f}" for n, m in zip(layers, values.mean(axis=0))},
                         "entropy (nats)": f"{entropy.mean():.3f} ± {entropy.std():.3f}",
                         "uniform": f"{np.log(len(layers)):.3f}",
                         "entropy / uniform": f"{entropy.mean() / np.log(len(layers)):.2f}" if len(layers) > 1 else ""})
        if curves:
            figures.append(plots.plot_layer_weights(curves, os.path.join(plot_dir, f"layer_weights_{up['name']}.png"),
                                                    title=f"learned layer weights, {up['name']}"))
    table = pd.DataFrame(rows)
    if len(table):  # one row per weighted model, one column per layer ("": not in that sum)
        layer_cols = sorted((c for c in table.columns if c.startswith("layer")), key=layer_index)
        table = table[["model", *layer_cols, "entropy (nats)", "uniform", "entropy / uniform"]].fillna("")
    return figures, table
