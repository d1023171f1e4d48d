"""Stage 5's unit of work: one variant on one fold with one seed, trained or read back.

Stage 5 trains every variant of the config on every fold of the protocol, ``n_runs`` times with
different seeds (:func:`train_fold_run`); a finished run of the same inputs (:func:`run_key`: no paths,
so a moved experiment is the same) is read back, and an unfinished one resumes. The classical
reference is fitted with scikit-learn (:func:`fit_reference`). :func:`predict_saved_run` scores a
saved model on other utterances without training (cross-corpus evaluation).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from ser_modules.data.datasets import LengthBucketBatchSampler
from ser_modules.data.folds import Fold
from ser_modules.dump.store import FeatureStore
from ser_modules.models.ser import (
    LinearSVMReference,
)
from ser_modules.ser.brain import train_neural
from ser_modules.ser.finetune import upstream_path, weighted_sum_of
from ser_modules.ser.inputs import SERDataset, SERInputs, collate
from ser_modules.ser.dimensional import (
    TargetScaler,
    attribute_values,
    has_attributes,
    output_sizes,
    saved_task,
    split_outputs,
)
from ser_modules.ser.variants import (
    VARIANT_TRAINING_KEYS,
    VariantSpec,
    forward,
    restore_model,
    variant_attributes,
)
from ser_modules.utils.fileio import ManifestError, StagedOutputs, save_torch, write_csv, write_json
from ser_modules.utils.seeding import seed_all


def store_identity(store: FeatureStore) -> str:
    """A store as ``<name>/<key>``: its content key, the same wherever the experiment folder lives."""
    return "/".join(os.path.normpath(store.folder).split(os.sep)[-2:])


def variant_identity(spec: VariantSpec) -> dict:
    """What a run of ``spec`` is trained from: its fields without its own ``n_runs`` (how many seeds run
    beside it), so that raising a variant's runs keeps those it has."""
    return {**vars(spec), "options": {k: v for k, v in spec.options.items() if k != "n_runs"}}


def run_key(spec: VariantSpec, fold: Fold, run: int, classes: list[str], inputs: SERInputs, hp: dict) -> dict:
    """What a (variant, fold, run) result is computed from: no paths, so a moved experiment is the same."""
    stores = [inputs.asr_store(spec.asr, fold.name)] if spec.asr else []
    if spec.uses_handcrafted:
        stores.append(inputs.handcrafted_store())
    if spec.type == "reference":
        stores.append(inputs.egemaps_store())
    # a weighted sum's own key does not change other variants: they keep their finished runs
    skip = {"output_folder"} | ({"layer_weights_lr"} if spec.type != "weighted" else set())
    hparams = {k: v for k, v in hp.items() if isinstance(v, (int, float, str)) and k not in skip}
    key = {"variant": variant_identity(spec), "hparams": hparams, "fold": [fold.train, fold.valid, fold.test],
           "stores": [store_identity(st) for st in stores], "classes": classes, "run": run}
    attributes = variant_attributes(spec, hp.get("attributes"))
    if attributes:  # (a categorical run's key is what it was before attributes existed)
        key["attributes"] = attributes
    if spec.reads_waveform and spec.layers == ["layer0"]:  # every block from the waveform: the stem trains too
        key["trains_stem"] = True  # (runs made before it did are not reused)
    return key


def finished_predictions(staged: StagedOutputs) -> pd.DataFrame | None:
    """The ``predictions.csv`` of finished outputs of exactly ``staged``'s inputs (``attrs["finished_before"]``
    set), or None when they must be made."""
    path = os.path.join(staged.folder, "predictions.csv")
    if not (staged.done and os.path.isfile(path)):
        return None
    frame = pd.read_csv(path, keep_default_na=False, dtype={"ID": str})
    frame.attrs["finished_before"] = True
    return frame


def predictions_frame(ids: list[str], fold: str, run: int, label_of: dict, classes: list[str],
                      probs: np.ndarray | None, attributes: list[str] = (), values: dict | None = None,
                      predicted: np.ndarray | None = None) -> pd.DataFrame:
    """The rows of a ``predictions.csv``: ``ID, fold, run, true`` (the class label), then with class
    probabilities ``probs [len(ids), classes]`` ``predicted, p_<class>...``, and with ``attributes``
    ``true_<attribute>, pred_<attribute>...`` (``values``: utterance -> true values, ``predicted
    [len(ids), A]``, both in the attribute's original scale); numbers rounded to 6 decimals."""
    frame = pd.DataFrame({"ID": ids, "fold": fold, "run": run, "true": [label_of[i] for i in ids]})
    if probs is not None:
        frame["predicted"] = [classes[i] for i in probs.argmax(axis=1)]
        for j, c in enumerate(classes):
            frame[f"p_{c}"] = probs[:, j].round(6)
    for j, a in enumerate(attributes):
        frame[f"true_{a}"] = np.round([values[i][j] for i in ids], 6)
        frame[f"pred_{a}"] = np.round(predicted[:, j], 6)
    return frame


def remove_resume_state(run_dir: str) -> None:
    """Delete a finished run's ``resume.pt`` (model, optimizer and best state: ~230 MB for a paper-size
    IAAN): only an unfinished run resumes, and ``model.pt`` holds the best weights."""
    path = os.path.join(run_dir, "resume.pt")
    if os.path.isfile(path):
        os.remove(path)


def train_fold_run(spec: VariantSpec, fold: Fold, run: int, manifest: pd.DataFrame, classes: list[str],
                   inputs: SERInputs, hp: dict, out_dir: str, device: str = "cpu",
                   curves_dir: str | None = None) -> pd.DataFrame:
    """Train one variant on one fold with seed ``hp['seed'] + run``; write and return test predictions
    (and its training curves in ``curves_dir``, which is not part of what the run is: a moved experiment's
    finished runs stay finished).

    A finished run of the same inputs is read back (``frame.attrs["finished_before"]``); otherwise the run trains in a work folder beside
    ``out_dir`` (resuming from its ``resume.pt`` after an interruption) that replaces ``out_dir`` only
    when complete (:class:`~ser_modules.utils.fileio.StagedOutputs`), without its ``resume.pt``.
    """
    staged = StagedOutputs(out_dir, run_key(spec, fold, run, classes, inputs, hp))
    finished = finished_predictions(staged)
    if finished is not None:
        return finished
    out_dir = staged.begin()
    pred_path = os.path.join(out_dir, "predictions.csv")
    seed = int(hp["seed"]) + run
    seed_all(seed)
    # A variant may set its own epochs, batch size and learning rate (the demo gives cheap models more epochs).
    hp = {**hp, **{k: spec.options[k] for k in VARIANT_TRAINING_KEYS if k in spec.options}}
    label_of = dict(zip(manifest["ID"], manifest["emotion"]))
    index = {c: i for i, c in enumerate(classes)}
    dims = inputs.dim(spec, fold.name)
    attributes = variant_attributes(spec, hp.get("attributes"))
    values = scaler = targets = None
    if attributes:  # standardised with the training speakers' statistics; predictions back in the original scale
        values = attribute_values(manifest, attributes, "the emotion manifest")
        scaler = TargetScaler.fit([values[i] for i in fold.train])
        targets = {i: scaler.transform(v) for i, v in values.items()}
    if spec.type == "reference":
        model, test_ids, probs, predicted, history = fit_reference(
            spec, fold, [index[label_of[i]] for i in fold.train], [index[label_of[i]] for i in fold.valid], inputs,
            dims, len(classes), hp, seed, targets)
        state = model.state_dict()
    else:
        model, test_ids, probs, predicted, history, state = train_neural(
            spec, fold, manifest, label_of, index, inputs, dims, len(classes), {**hp, "curves_dir": curves_dir}, seed,
            out_dir, device, targets)
    task = {"task": spec.task, "attributes": attributes, "attribute_scaler": scaler.state_dict()} if attributes else {}
    write_json(os.path.join(out_dir, "model.json"), {"variant": {"name": spec.name, "type": spec.type, "asr": spec.asr,
                                                                 "layer": spec.layer, "hidden": spec.hidden, **spec.options},
                                                     "dims": dims, "classes": classes, "dropout": hp["dropout"],
                                                     "fold": fold.name, "run": run, "seed": seed, **task})
    save_torch(state, os.path.join(out_dir, "model.pt"))
    summed = weighted_sum_of(model)
    if summed is not None:  # the weighted variant's learned layer weights, for stage 6
        with torch.no_grad():
            write_json(os.path.join(out_dir, "layer_weights.json"),
                       dict(zip(spec.summed_layers, [round(float(w), 6) for w in summed.layer_weights()])))
    frame = predictions_frame(test_ids, fold.name, run, label_of, classes, probs, attributes, values,
                              scaler.inverse(predicted) if attributes else None)
    write_json(os.path.join(out_dir, "history.json"), history)
    write_csv(pred_path, frame)
    remove_resume_state(out_dir)
    staged.publish()
    return frame


def labels_digest(ids: list[str], labels: list[str]) -> str:
    """What the predictions of a saved model on a corpus depend on besides the model and the stores."""
    from ser_modules.utils.fileio import key_digest

    return key_digest({"labels": list(zip(ids, labels))})


def predict_saved_run(spec: VariantSpec, fold: str, run: int, run_dir: str, manifest: pd.DataFrame,
                      classes: list[str], inputs: SERInputs, out_dir: str, device: str = "cpu",
                      batch_size: int = 32) -> pd.DataFrame:
    """Score the saved model of one finished (variant, fold, run) (``run_dir``: ``model.json`` and
    ``model.pt`` of :func:`train_fold_run`) on the utterances of ``manifest`` (``ID``, ``emotion``, and the
    dialog context IAAN reads) stored in ``inputs``; no training. Writes ``out_dir/predictions.csv`` in the
    columns of a training run's and returns it; a rerun with the same model and stores reads it back
    (``frame.attrs["finished_before"]``)."""
    from ser_modules.utils.fileio import file_digest, read_json

    if manifest.empty:
        raise ManifestError(f"no utterance to score the model of {run_dir} on")
    model_path = os.path.join(run_dir, "model.pt")
    if not os.path.isfile(model_path):
        raise ManifestError(f"{model_path}: no saved model of {spec.name} {fold} run{run} (finish stage 5's training)")
    stores = [inputs.asr_store(spec.asr, fold)] if spec.asr else []
    stores += [inputs.handcrafted_store()] if spec.uses_handcrafted else []
    stores += [inputs.egemaps_store()] if spec.type == "reference" else []
    ids = manifest["ID"].astype(str).tolist()
    labels = manifest["emotion"].astype(str).tolist()
    info = read_json(os.path.join(run_dir, "model.json"))
    attributes, scaler = saved_task(info)
    scored = attributes if attributes and has_attributes(manifest, attributes) else []  # those the corpus carries
    values = attribute_values(manifest, scored) if scored else None
    key = {"model": file_digest(model_path), "variant": variant_identity(spec), "fold": fold, "run": run,
           "stores": [store_identity(st) for st in stores], "utterances": labels_digest(ids, labels), "classes": classes}
    if scored:
        key["attributes"] = labels_digest(ids, [str(values[i].round(6).tolist()) for i in ids])
    staged = StagedOutputs(out_dir, key)
    finished = finished_predictions(staged)
    if finished is not None:
        return finished
    if info["classes"] != classes:
        raise ManifestError(f"{run_dir}/model.json: classes {info['classes']}, the training corpus has {classes} "
                            "(rerun stage 5)")
    dims = inputs.dim(spec, fold)
    if dims != info["dims"]:
        raise ManifestError(f"{stores[0].folder if stores else run_dir}: inputs of {dims} values, the model of {run_dir} "
                            f"was trained on {info['dims']}")
    model = restore_model(spec, info, model_path, upstream_path(inputs.stores_json, spec.asr, fold) if spec.finetuned
                          else None)
    model.to(device).eval()
    index = {c: i for i, c in enumerate(classes)}
    dataset = SERDataset(spec, ids, [index[c] for c in labels], inputs, fold, manifest)
    sampler = LengthBucketBatchSampler([dataset.length(i) for i in range(len(dataset))], batch_size, shuffle=False)
    order, chunks = [], []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate):
            order += batch["id"]
            chunks.append(forward(model, spec, batch, device).float().cpu())
    n_cls = output_sizes(spec.task, len(classes), len(attributes))[0]
    probs, predicted = split_outputs(torch.cat(chunks), n_cls, scaler)
    frame = predictions_frame(order, fold, run, dict(zip(ids, labels)), classes, probs, scored, values,
                              predicted[:, [attributes.index(a) for a in scored]] if scored else None)
    work = staged.begin()
    write_csv(os.path.join(work, "predictions.csv"), frame)
    staged.publish()
    return frame


def fit_reference(spec, fold, train_labels, valid_labels, inputs, dims, n_classes, hp, seed, targets=None):
    """The classical reference: eGeMAPS functionals, standardised, into a linear SVM (classes) and/or ridge
    regression (attributes; scikit-learn).

    The SVM's ``C`` is chosen from ``spec.options['C']`` (a list; default 1e-3 ... 1) by UA on the
    fold's validation speakers, the ridge's ``alpha`` from ``spec.options['alpha']`` (default 0.1 ... 1000)
    by mean CCC there; then both are refitted on training + validation speakers. The fitted scaler and
    weights become a :class:`~ser_modules.models.ser.LinearSVMReference` (class rows first); the class
    scores written are the softmax of its decision values (not calibrated probabilities). ``targets``:
    utterance -> standardised attribute values. Returns the model, test ids, class probabilities (None
    without classes), standardised attribute predictions (None without attributes) and the history.
    """
    from sklearn.preprocessing import StandardScaler

    store = inputs.egemaps_store()

    def features(ids):
        return np.stack([store.get(i, "egemaps")[0] for i in ids]).astype(np.float64)

    x_train, x_valid = features(fold.train), features(fold.valid)
    x_fit = np.concatenate([x_train, x_valid])
    scaler, history, rows, chosen = StandardScaler().fit(x_fit), [], [], {}
    if spec.predicts_classes:
        rows.append(_svm_rows(spec, x_train, x_valid, np.asarray(train_labels), np.asarray(valid_labels), scaler,
                              n_classes, hp, seed, history, chosen))
    if spec.predicts_attributes:
        y = {split: np.stack([targets[i] for i in ids]) for split, ids in (("train", fold.train), ("valid", fold.valid))}
        rows.append(_ridge_rows(spec, x_train, x_valid, y["train"], y["valid"], scaler, history, chosen))
    coef, intercept = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
    model = LinearSVMReference(dims["egemaps"], len(intercept))
    model.set_parameters(scaler.mean_, scaler.scale_, coef, intercept)
    with torch.no_grad():
        x_test = torch.from_numpy(features(fold.test).astype(np.float32)).unsqueeze(1)
        outputs = model(x_test, torch.ones(len(fold.test), dtype=torch.long))
    probs, attributes = split_outputs(outputs, n_classes if spec.predicts_classes else 0)  # attributes standardised
    history.append({**chosen, "fitted_on": "train+valid", "utterances": int(len(x_fit))})
    return model, list(fold.test), probs, attributes, history


def _svm_rows(spec, x_train, x_valid, y_train, y_valid, scaler, n_classes, hp, seed, history, chosen):
    """``(coef [C, D], intercept [C])`` of the linear SVM with ``C`` chosen by validation UA (the grid's scores
    added to ``history``, the choice to ``chosen``), refitted on train + valid (standardised by ``scaler``)."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    weight = "balanced" if hp.get("class_weights") == "balanced" else None
    grid = spec.options.get("C", [0.001, 0.01, 0.1, 1.0])
    grid = [float(c) for c in (grid if isinstance(grid, (list, tuple)) else [grid])]

    def svm(c, x, y):
        return LinearSVC(C=c, class_weight=weight, max_iter=20000, random_state=seed).fit(x, y)

    tried = []
    for c in grid if len(grid) > 1 and len(set(y_train)) > 1 else []:
        train_scaler = StandardScaler().fit(x_train)
        model = svm(c, train_scaler.transform(x_train), y_train)
        tried.append({"C": c, "valid_UA": round(float(balanced_accuracy_score(y_valid, model.predict(
            train_scaler.transform(x_valid)))), 4)})
    best = max(tried, key=lambda h: (h["valid_UA"], -h["C"]))["C"] if tried else grid[0]
    history += tried
    chosen["chosen_C"] = best
    x_fit, y_fit = scaler.transform(np.concatenate([x_train, x_valid])), np.concatenate([y_train, y_valid])
    if len(set(y_fit)) > 1:
        fitted_svm = svm(best, x_fit, y_fit)
        coef, intercept, fitted = fitted_svm.coef_, fitted_svm.intercept_, fitted_svm.classes_
    else:  # one class in a tiny corpus's fold: nothing to separate (LinearSVC refuses), always that class
        fitted, coef, intercept = y_fit[:1], np.zeros((1, x_fit.shape[1])), np.zeros(1)
    if len(fitted) == 2:  # a two-class SVM has one decision value d; [-d/2, d/2] has the same argmax
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    # Rows per class; a class absent from training gets a prohibitive bias and is never predicted.
    full_coef, full_intercept = np.zeros((n_classes, coef.shape[1])), np.full(n_classes, -1e4)
    full_coef[fitted], full_intercept[fitted] = coef, intercept
    return full_coef, full_intercept


def _ridge_rows(spec, x_train, x_valid, y_train, y_valid, scaler, history, chosen):
    """``(coef [A, D], intercept [A])`` of ridge regression on standardised attribute values with ``alpha``
    chosen by mean validation CCC (as :func:`_svm_rows`), refitted on train + valid (standardised by ``scaler``)."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    from ser_modules.ser.dimensional import mean_ccc

    grid = spec.options.get("alpha", [0.1, 1.0, 10.0, 100.0, 1000.0])
    grid = [float(a) for a in (grid if isinstance(grid, (list, tuple)) else [grid])]
    tried = []
    for alpha in grid if len(grid) > 1 else []:
        train_scaler = StandardScaler().fit(x_train)
        ridge = Ridge(alpha=alpha).fit(train_scaler.transform(x_train), y_train)
        tried.append({"alpha": alpha, "valid_CCC": round(mean_ccc(y_valid, ridge.predict(
            train_scaler.transform(x_valid))), 4)})
    best = max(tried, key=lambda h: (h["valid_CCC"], h["alpha"]))["alpha"] if tried else grid[0]
    history += tried
    chosen["chosen_alpha"] = best
    ridge = Ridge(alpha=best).fit(scaler.transform(np.concatenate([x_train, x_valid])),
                                  np.concatenate([y_train, y_valid]))
    return ridge.coef_.reshape(y_train.shape[1], -1), np.asarray(ridge.intercept_).reshape(-1)
