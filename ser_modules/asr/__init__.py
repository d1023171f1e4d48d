"""Floor 4: the ASR models' life: training, decoding, evaluation, adaptation, and the saved models.

``brains`` (SpeechBrain ``Brain`` classes of DeepSpeech2 and LAS), ``training`` (:func:`fit_asr`),
``decoding`` (greedy, beam and joint CTC/attention search), ``evaluation`` (WER/CER and
``asr_results.csv``), ``adaptation`` (Yeh 2020's three-stage fine-tuning and structured LAS per fold,
the CTC adaptation of an upstream), ``saved_models`` (the models an experiment exported, found and
rebuilt).

May import: utils, data, models, upstreams.
"""
