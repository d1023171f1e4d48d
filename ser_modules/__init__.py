"""SER toolkit library: speech emotion recognition from the representations of ASR networks.

Subpackages by responsibility, on floors: a subpackage imports only subpackages on lower floors
(:data:`LAYERS`; ``tests/test_layering.py`` checks every import, lazy ones included, and that no
modules import each other in a cycle).

=====  ============  ==========================================================================
floor  subpackage    what lives there
=====  ============  ==========================================================================
1      ``utils``     file I/O (atomic writes, manifests, audio file headers), hparams, job pools,
                     seeding, the environment of a result
2      ``data``      corpus conventions, folds, evaluation corpora, audio reading and screening,
                     transcripts, acoustic features, datasets and batching, dialog context
3      ``models``    the ASR and SER networks as plain ``torch.nn`` modules
3      ``upstreams`` pretrained encoders (transformers, SpeechBrain, openai-whisper, torchaudio)
                     as frozen layer providers
4      ``asr``       ASR training (``Brain`` classes), decoding, evaluation, adaptation, the models
                     an experiment saved
5      ``dump``      representation stores: planning, writing, reading
6      ``ser``       SER variants, inputs, training, stage 5's jobs, metrics, probe templates
7      ``report``    stage 6: result tables, significance, plots, cross-corpus and upstream reports
7      ``inference`` the recognizer and its parts, export, model card
8      ``stages``    the recipe stages 2-6 (``python -m ser_modules.stages.<name>``)
8      ``benchmark`` ``python -m ser_modules.benchmark``
8      ``infer``,    the commands ``python -m ser_modules.infer`` and ``python -m ser_modules.export``
       ``export``
=====  ============  ==========================================================================
"""

__version__ = "0.1.0"

# subpackage (or top-level module) -> floor; each imports only from lower floors
LAYERS = {
    "utils": 1,
    "data": 2,
    "models": 3, "upstreams": 3,
    "asr": 4,
    "dump": 5,
    "ser": 6,
    "report": 7, "inference": 7,
    "stages": 8, "benchmark": 8, "infer": 8, "export": 8,
}

from ser_modules.utils.legacy_paths import install_redirects  # noqa: E402 (after the constants above)

install_redirects()
