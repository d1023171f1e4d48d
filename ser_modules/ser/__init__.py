"""Floor 6: speech emotion recognition on stored representations, stage 5.

``variants`` (a variant's spec and model), ``inputs`` (stores and datasets), ``brain`` (the training
``Brain`` and its schedule), ``training`` (one variant, fold and run, trained or read back; scoring a
saved model), ``jobs`` (stage 5's trainings), ``cross_corpus`` (stage 5's scoring on evaluation
corpora), ``metrics`` (UA, WA, F1, CCC, significance, chance), ``dimensional`` (attribute targets, CCC and
its loss, the target scaler), ``probe`` (upstream_probe's variant templates).

May import: utils, data, models, upstreams, asr, dump.
"""
