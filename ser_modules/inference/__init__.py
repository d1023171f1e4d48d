"""Floor 7: trained models on new audio, and exported models.

``recognizer`` (:class:`~ser_modules.inference.recognizer.EmotionRecognizer`), ``loading`` (fold models
from an experiment or an export), ``windows``, ``streaming``, ``batching``, ``asr`` (its parts),
``experiment`` (what an experiment folder says about itself), ``export`` (a variant as a
self-contained folder), ``hub_interface`` (its SpeechBrain files), ``model_card``. The commands are
:mod:`ser_modules.infer` and :mod:`ser_modules.export`.

May import: utils, data, models, upstreams, asr, dump, ser.
"""
