"""Training curves (ser_modules/utils/curves.py, ser_modules/report/curves.py): TensorBoard event files read
back with tensorboard's own reader, a resumed run without duplicated steps, only the main process writing,
one line without the package, and stage 6's PNG curves, on the tiny experiments of the three recipes."""

import json
import logging
import os

import pytest

from ser_modules.report.curves import parse_train_log
from ser_modules.utils import curves as curves_module
from ser_modules.utils.curves import Curves, read_curves


def test_a_resumed_training_shows_each_step_once(tmp_path):
    first = Curves(str(tmp_path))
    for step in (1, 2, 3, 4):  # checkpointed after step 2, killed after step 4
        first.log(step, {"loss/train": 10.0 + step, "UA/valid": 0.1 * step})
    first.close()
    resumed = Curves(str(tmp_path), resume_step=2)
    for step in (3, 4, 5):
        resumed.log(step, {"loss/train": 20.0 + step, "UA/valid": 0.5})
    resumed.close()
    got = read_curves(str(tmp_path))
    assert got["loss/train"] == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0), (5, 25.0)]
    assert [s for s, _ in got["UA/valid"]] == [1, 2, 3, 4, 5]


def test_non_finite_values_are_left_out_and_a_fresh_start_hides_an_unfinished_runs_steps(tmp_path):
    killed = Curves(str(tmp_path))
    killed.log(1, {"loss/train": 5.0, "lr": None, "loss/valid": float("nan")})
    killed.close()
    again = Curves(str(tmp_path))  # no checkpoint to resume: starts over
    again.log(1, {"loss/train": 4.0})
    again.close()
    assert read_curves(str(tmp_path)) == {"loss/train": [(1, 4.0)]}


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(curves_module, "_main_process", lambda: False)
    other_rank = Curves(str(tmp_path / "rank1"))
    other_rank.log(1, {"loss/train": 1.0})
    assert not other_rank.on and not os.path.exists(tmp_path / "rank1")


def test_without_tensorboard_one_line_says_the_curves_are_off(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(curves_module, "tensorboard_available", lambda: False)
    monkeypatch.setattr(curves_module, "_told_off", False)
    caplog.set_level(logging.INFO, logger=curves_module.__name__)
    for name in ("a", "b"):
        off = Curves(str(tmp_path / name))
        off.log(1, {"loss/train": 1.0})
        assert not off.on
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "training curves off: pip install tensorboard" in said[0]
    assert not os.listdir(tmp_path)


def test_speechbrain_train_logs_are_parsed(tmp_path):
    log = tmp_path / "train_log.txt"
    log.write_text("epoch: 1, lr: 2.00e-03 - train loss: 84.95, train skipped_batches: 0 - valid loss: 68.50, "
                   "valid CER: 67.44, valid WER: 94.91\n"
                   "epoch: 2, lr: 1.00e-03 - train loss: 62.09, train skipped_batches: 1 - valid loss: 48.59, "
                   "valid CER: 46.61, valid WER: 84.57\n"
                   "epoch: 2, lr: 1.00e-03 - train loss: 61.00, train skipped_batches: 0 - valid loss: 48.00, "
                   "valid CER: 46.00, valid WER: 84.00\n")  # a resumed run wrote epoch 2 again: the last counts
    rows = parse_train_log(str(log))
    assert rows == [{"epoch": 1, "lr": 0.002, "train loss": 84.95, "train skipped_batches": 0, "valid loss": 68.5,
                     "valid CER": 67.44, "valid WER": 94.91},
                    {"epoch": 2, "lr": 0.001, "train loss": 61.0, "train skipped_batches": 0, "valid loss": 48.0,
                     "valid CER": 46.0, "valid WER": 84.0}]


def one_run(folder) -> str:
    """The one run folder (the one holding event files) under ``folder``."""
    runs = sorted({root for root, _, files in os.walk(folder) if any(f.startswith("events.") for f in files)})
    assert len(runs) == 1, runs
    return runs[0]


def epochs_of(curve) -> list[int]:
    return [step for step, _ in curve]


@pytest.mark.slow
def test_the_las_experiment_leaves_live_curves_of_every_training_and_their_pngs(las_exp):
    exp, proc = las_exp
    board = exp / "tensorboard"
    assert f"tensorboard --logdir {board}/stage2" in proc.stderr and f"--logdir {board}/stage5" in proc.stderr
    # stage 2: one value per epoch of train_log.txt, at increasing optimizer steps
    asr = read_curves(one_run(board / "stage2"))
    logged = parse_train_log(str(exp / "asr" / "train_log.txt"))
    assert {"loss/train", "loss/valid", "CER/valid", "WER/valid", "lr", "epoch", "skipped_batches/train"} <= set(asr)
    assert [v for _, v in asr["epoch"]] == [r["epoch"] for r in logged]
    assert [round(v, 2) for _, v in asr["CER/valid"]] == [r["valid CER"] for r in logged]
    steps = epochs_of(asr["loss/valid"])
    assert steps == sorted(set(steps)) and steps[0] > 0
    # stage 3: per adaptation variant, fold and stage
    stage_dirs = sorted(d for d, _, files in os.walk(board / "stage3") if any(f.startswith("events.") for f in files))
    assert stage_dirs and all(os.path.basename(d).startswith("stage") for d in stage_dirs)
    first = read_curves(stage_dirs[0])
    assert {"loss/train", "loss/valid", "CER/valid"} <= set(first)
    # stage 5: per variant, fold and run, one value per epoch of history.json
    variant = next(v for v in sorted(os.listdir(exp / "ser")) if (exp / "ser" / v).is_dir()
                   and v != "eGeMAPS-SVM" and not v.startswith("baseline"))
    fold = sorted(f for f in os.listdir(exp / "ser" / variant) if (exp / "ser" / variant / f).is_dir())[0]
    history = json.loads((exp / "ser" / variant / fold / "run0" / "history.json").read_text())
    ser = read_curves(str(board / "stage5" / variant / fold / "run0"))
    assert {"loss/train", "loss/valid", "UA/valid", "lr"} <= set(ser)
    assert epochs_of(ser["UA/valid"]) == [h["epoch"] for h in history]
    assert [round(v, 4) for _, v in ser["UA/valid"]] == [h["valid_UA"] for h in history]
    # stage 6: the same curves as PNGs
    pngs = set(os.listdir(exp / "plots" / "curves"))
    assert {"stage2_asr.png", f"stage5_{variant}.png"} <= pngs and any(p.startswith("stage3_") for p in pngs)


@pytest.mark.slow
def test_a_weighted_sums_curves_hold_its_layer_weights_and_their_learning_rate(upstream_exp):
    exp, _ = upstream_exp
    variant = next(v for v in os.listdir(exp / "ser") if v.startswith("weighted-MP"))
    run = exp / "tensorboard" / "stage5" / variant
    curves = read_curves(one_run(run / sorted(os.listdir(run))[0]))
    weights = sorted(t for t in curves if t.startswith("layer_weight/"))
    assert weights == ["layer_weight/layer0", "layer_weight/layer1", "layer_weight/layer2"]
    per_epoch = [sum(curves[t][k][1] for t in weights) for k in range(len(curves[weights[0]]))]
    assert per_epoch == pytest.approx([1.0] * len(per_epoch), abs=1e-5)  # a softmax: they sum to one
    assert "lr/layer_weights" in curves and curves["lr/layer_weights"][0][1] != curves["lr"][0][1]
