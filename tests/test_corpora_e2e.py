"""Every --emotion-corpus value through stages 1-6 of a recipe, on the preparer tests' fixture corpora
(tests/corpus_fixtures.py) with tiny models.

Each corpus runs once through the recipe that exercises what is particular to it (CELLS), and each
recipe runs the demo corpus and IEMOCAP's real layout; both recipes' later stages read every corpus's
manifest the same way, so a corpus need not run through both. Each recipe pretrains its tiny ASR model
once, in the demo corpus's run; the other runs get a copy of that experiment's asr/ folder, which their
stage 2 recognises as finished (same configuration, same ASR data). The runs go in the background
(tests/background.py), two at a time, most of their time the start-up of each run's stage processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pandas as pd
import pytest

from background import starts
from corpus_fixtures import write_cremad, write_csv_corpus, write_emobox_ravdess, write_emodb, write_iemocap, write_ravdess
from recipe_runs import LAS_GREEDY_ADAPTATION

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ("ctc_transfer", "las_adapt")
CTC_TINY = [
    "asr.n_epochs=1", "asr.rnn_layers=1", "asr.rnn_hidden=16", "asr.conv_channels=2", "asr.decoders=[greedy]",
    "dump.dtype=float32", "dump.augmented_copies=0",
    "ser.variants=[{name: MP-1, type: mp, asr: pretrained, layer: gru1, max_epochs: 2},"
    " {name: baseline-8, type: baseline, hidden: 8, max_epochs: 1}, {name: eGeMAPS-SVM, type: reference, C: [0.1]}]",
    "ser.n_runs=1", "score.reference=baseline-8", "score.tsne_layers=[gru1]", "score.loudness_layer=gru1", "score.chance_runs=2",
]
# One adapted model (fine-tuned, one stage of one epoch per fold) and a probe of it, so that a corpus
# without transcripts shows what is skipped; IAAN is skipped wherever there are no dialogs.
LAS_TINY = [
    "asr.n_epochs=1", "asr.listener_hidden=8", "asr.fc_size=16", "asr.speller_hidden=16", "asr.attention_dim=8",
    "asr.embedding_dim=8", "asr.decoders=[greedy]", "adapt.epochs_per_stage=1", "adapt.variants=[finetuned]",
    "adapt.stages=[all]", "adapt.teacher_forcing=[1.0]", "adapt.score_every_stage=False", *LAS_GREEDY_ADAPTATION,
    "dump.models=[pretrained, finetuned]", "dump.dtype=float32",
    "ser.variants=[{name: IAAN-pretrained-pblstm1, type: iaan, asr: pretrained, layer: pblstm1, hidden: 8,"
    " max_epochs: 1},"
    " {name: MP-pretrained-pblstm1, type: mp, asr: pretrained, layer: pblstm1, max_epochs: 2},"
    " {name: MP-finetuned-pblstm1, type: mp, asr: finetuned, layer: pblstm1, max_epochs: 2},"
    " {name: eGeMAPS-SVM, type: reference, C: [0.1]}]",
    "score.reference=MP-pretrained-pblstm1", "score.tsne_layers=[pblstm1]", "score.chance_runs=2",
]
TINY = {"ctc_transfer": CTC_TINY, "las_adapt": LAS_TINY}
EMOBOX_CREMAD_ONTO_RAVDESS = "anger:angry,disgust:disgust,fear:fearful,happy:happy,neutral:neutral,sad:sad"


@dataclass
class Corpus:
    """One --emotion-corpus value on a fixture corpus: the runner options, whether it has transcripts."""

    name: str
    option: str
    write: object = None  # writes the corpus into a folder and returns --emotion-root
    extra: tuple = ()
    transcripts: bool = True
    emobox: bool = False  # EmoBox's folds (--folds emobox, fixture JSONL) and a CREMA-D evaluation corpus


CORPORA = {c.name: c for c in [
    Corpus("demo", "demo"),  # the tiny demo corpus, reused from --demo-dir
    Corpus("iemocap", "iemocap", write_iemocap, ("--folds", "lospk")),  # 2 sessions: loso folds would be empty
    Corpus("ravdess", "ravdess", write_ravdess, ("--folds", "emobox"), emobox=True),
    Corpus("crema-d", "crema-d", write_cremad),  # 4 actors: the default k of 9 is fitted to 1
    Corpus("emodb", "emodb", write_emodb, ("--label-map", "iemocap4", "--k", "2")),
    Corpus("csv", "csv", write_csv_corpus),  # transcripts for 4 of 6 files
    Corpus("csv-no-transcripts", "csv", lambda d: write_csv_corpus(d, transcripts=False), transcripts=False),
]}
# ctc_transfer: 48 kHz stereo and EmoBox's folds and 8 classes, scored on CREMA-D too (RAVDESS), a k fitted to 4 actors (CREMA-D) and transcripts for some files
# (CSV) through the frozen ASR; las_adapt: adaptation on German transcripts (EmoDB) and a corpus without
# any (CSV), IAAN with dialog context (IEMOCAP).
CELLS = [("demo", "ctc_transfer"), ("demo", "las_adapt"), ("iemocap", "ctc_transfer"), ("iemocap", "las_adapt"),
         ("ravdess", "ctc_transfer"), ("crema-d", "ctc_transfer"), ("csv", "ctc_transfer"), ("emodb", "las_adapt"),
         ("csv-no-transcripts", "las_adapt")]
assert {c for c, _ in CELLS} == set(CORPORA) and {r for _, r in CELLS} == set(RECIPES)


@dataclass
class Run:
    exp: str
    returncode: int
    stdout: str
    stderr: str

    def failure(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-6000:]}"


class Matrix:
    """The requested cells as background runs; a recipe's demo run goes first and lends its asr/ folder."""

    def __init__(self, bg, root: str, tiny_demo, cells: list[tuple[str, str]]):
        self.root, self.tiny_demo = root, tiny_demo
        needed = {("demo", recipe) for _, recipe in cells} | set(cells)
        self.roots = {name: c.write(os.path.join(root, "corpora", name)) for name, c in CORPORA.items()
                      if c.write and name in {n for n, _ in needed}}  # both recipes read one copy
        # the demo runs are submitted first: the others wait for their future
        self.futures = {cell: bg.run(self._run, cell) for cell in CELLS if cell in needed}

    def result(self, cell: tuple[str, str]) -> Run:
        return self.futures[cell].result()

    @staticmethod
    def _share_asr(source: str, exp: str) -> None:
        """The pretrained ASR model of ``source`` and its stage-2 scores (not its emotion corpus's WER)."""
        os.makedirs(exp)
        shutil.copytree(os.path.join(source, "asr"), os.path.join(exp, "asr"))
        scores = pd.read_csv(os.path.join(source, "asr_results.csv"), keep_default_na=False, dtype=str)
        scores[scores["split"].isin(["dev", "test"])].to_csv(os.path.join(exp, "asr_results.csv"), index=False)

    def _run(self, cell: tuple[str, str]) -> Run:
        corpus, recipe = CORPORA[cell[0]], cell[1]
        exp = os.path.join(self.root, f"{corpus.name}_{recipe}")
        demo_dir = os.path.dirname(self.tiny_demo.result()["iemocap"])
        args = ["--exp-dir", exp, "--size", "demo", "--nj", "1", "--emotion-corpus", corpus.option,
                "--asr-corpus", "demo", "--demo-dir", demo_dir, *corpus.extra]
        if corpus.name in self.roots:
            args += ["--emotion-root", self.roots[corpus.name]]
        if corpus.emobox:
            args += ["--emobox-dir", write_emobox_ravdess(os.path.join(self.root, "corpora", "EmoBox")),
                     "--eval-corpus", "crema-d", "--eval-root", write_cremad(os.path.join(self.root, "corpora", "cremad-eval")),
                     "--eval-label-map", EMOBOX_CREMAD_ONTO_RAVDESS]
        if corpus.name != "demo":
            source = self.result(("demo", recipe))
            if source.returncode != 0:
                raise RuntimeError(f"the {recipe} demo run failed, so there is no ASR model to share")
            self._share_asr(source.exp, exp)
        env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(["bash", os.path.join(REPO, "recipes", recipe, "run.sh"), *args, *TINY[recipe]], env=env,
                              capture_output=True, text=True, timeout=900)
        return Run(exp, proc.returncode, proc.stdout, proc.stderr)


@starts("matrix")
def _start_matrix(bg, session):
    cells = [item.callspec.params["cell"] for item in session.items
             if item.module.__name__ == __name__ and hasattr(item, "callspec") and "cell" in item.callspec.params]
    return Matrix(bg, str(bg.tmp.mktemp("corpora_e2e")), bg.start("tiny_demo"), cells)


@pytest.fixture(scope="module")
def matrix(background):
    return background.start("matrix")


def read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("cell", CELLS, ids=[f"{c}-{r}" for c, r in CELLS])
def test_every_corpus_runs_both_recipes_end_to_end(matrix, cell):
    run = matrix.result(cell)
    corpus = CORPORA[cell[0]]
    assert run.returncode == 0, run.failure()
    assert "Traceback" not in run.stderr, run.failure()
    assert f"done: stages 1-6 of {run.exp}" in run.stderr
    assert os.path.isfile(os.path.join(run.exp, "RESULTS.md"))
    assert len(pd.read_csv(os.path.join(run.exp, "results.csv"))) >= 1
    asr = pd.read_csv(os.path.join(run.exp, "asr_results.csv"), keep_default_na=False)
    emotion_rows = asr[asr["corpus"] == corpus.option]
    if corpus.transcripts:
        assert len(emotion_rows) >= 1 and "stage 3 skipped" not in run.stdout
    else:  # one line says why, and no WER row exists
        assert f"stage 3 skipped: the emotion corpus {corpus.option} has no transcripts" in run.stdout
        assert emotion_rows.empty
    if corpus.name != "demo":  # the shared ASR model was recognised, not retrained
        assert "stage 2 already finished" in run.stderr


@pytest.mark.parametrize("cell", [("csv-no-transcripts", "las_adapt")], ids=["csv-no-transcripts-las_adapt"])
def test_without_transcripts_las_adapt_skips_adaptation_and_what_reads_it(matrix, cell):
    run = matrix.result(cell)
    assert run.returncode == 0, run.failure()
    lines = [line for line in run.stdout.splitlines() if "stage 3 skipped" in line]
    assert lines == ["stage 3 skipped: the emotion corpus csv has no transcripts, so no WER is scored on it and no "
                     "ASR model is adapted (finetuned)"]
    assert not os.path.exists(os.path.join(run.exp, "adapt", "finetuned"))
    assert "ASR model(s) finetuned of conf/dump.yaml not dumped: the emotion corpus csv has no transcripts" \
        in run.stderr
    assert set(read_json(os.path.join(run.exp, "dump", "stores_default.json"))["asr"]) == {"pretrained"}
    assert ("variant MP-finetuned-pblstm1 skipped: stage 4 stored no layers of ASR model 'finetuned' (no adaptation: "
            "the emotion corpus csv has no transcripts)") in run.stderr
    assert "variant IAAN-pretrained-pblstm1 skipped: IAAN needs dialog context" in run.stderr
    results = pd.read_csv(os.path.join(run.exp, "results.csv"))
    assert results["model"].tolist() == ["MP-pretrained-pblstm1", "eGeMAPS-SVM"]
    notes = open(os.path.join(run.exp, "RESULTS.md")).read()
    assert "Stage 3 scored no WER on the emotion corpus and adapted no ASR model: the emotion corpus csv has no " \
           "transcripts." in notes
    assert "`MP-finetuned-pblstm1` was not trained: stage 4 stored no layers of ASR model 'finetuned'" in notes


@pytest.mark.parametrize("cell", [("emodb", "las_adapt")], ids=["emodb-las_adapt"])
def test_emodb_transcripts_adapt_the_asr_and_results_name_their_language(matrix, cell):
    run = matrix.result(cell)
    assert run.returncode == 0, run.failure()
    folds = read_json(os.path.join(run.exp, "data", "emotion", "default", "folds_lkso.json"))["folds"]
    assert len(folds) == 3  # 7 speakers after the iemocap4 map, k = 2
    for fold in folds:
        assert os.path.isfile(os.path.join(run.exp, "adapt", "finetuned", fold["name"], "model.pt"))
    assert "MP-finetuned-pblstm1" in pd.read_csv(os.path.join(run.exp, "results.csv"))["model"].tolist()
    test = pd.read_csv(os.path.join(run.exp, "adapt", "data", folds[0]["name"], "test.csv"), keep_default_na=False)
    assert test["transcript"].str.fullmatch(r"[A-Z' ]+").all()  # umlauts spelled out for the ASR alphabet
    text = open(os.path.join(run.exp, "RESULTS.md")).read()
    assert "The transcripts of emodb are German (de) while the ASR is English (en)" in text


@pytest.mark.parametrize("cell", [("ravdess", "ctc_transfer")], ids=["ravdess-ctc_transfer"])
def test_emobox_folds_drive_stages_1_to_6_and_the_cross_corpus_table(matrix, cell):
    run = matrix.result(cell)
    assert run.returncode == 0, run.failure()
    emotion = os.path.join(run.exp, "data", "emotion", "full")  # EmoBox's RAVDESS classes: all 8
    folds = read_json(os.path.join(emotion, "folds_emobox.json"))["folds"]
    assert [f["name"] for f in folds] == ["fold1", "fold2", "fold3"]
    assert sorted(pd.read_csv(os.path.join(emotion, "manifest.csv"))["emotion"].unique()) == sorted(
        ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"])
    results = pd.read_csv(os.path.join(run.exp, "results.csv"))
    assert set(results["protocol"]) == {"full/emobox"} and set(results["folds"]) == {3}
    for fold in folds:  # every fold of every trained variant predicted EmoBox's test set
        predictions = pd.read_csv(os.path.join(run.exp, "ser", "MP-1", fold["name"], "run0", "predictions.csv"))
        assert sorted(predictions["ID"]) == sorted(fold["test"])
    cross = pd.read_csv(os.path.join(run.exp, "cross_corpus.csv"))
    assert set(cross["corpus"]) == {"crema-d"} and cross["UA_mean"].notna().all()


@pytest.mark.parametrize("cell", [("csv", "ctc_transfer")], ids=["csv-ctc_transfer"])
def test_a_missing_pretrained_model_is_a_one_line_error(matrix, cell, tmp_path):
    source = matrix.result(cell)
    assert source.returncode == 0, source.failure()
    exp = tmp_path / "exp"
    shutil.copytree(source.exp, exp, ignore=shutil.ignore_patterns("dump", "ser", "plots"))
    os.remove(exp / "asr" / "model.pt")
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "ser_modules.stages.dump", "--exp-dir", str(exp), "--data-dir",
                           str(exp / "data"), "--conf-dir", os.path.join(REPO, "recipes", "ctc_transfer", "conf"),
                           "--protocol", "default", "--folds", "lkso"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{exp}/asr/model.pt: no pretrained ASR model (run stage 2)" in proc.stderr
