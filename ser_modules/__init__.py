"""SER toolkit library: speech emotion recognition from the representations of ASR networks.

Modules: ``audio`` (reading any audio as 16 kHz mono), ``text`` (transcripts, vocabularies),
``fileio`` (atomic writes, manifests, logging), ``folds`` (speaker-independent cross-validation),
``corpus`` (manifest conventions of the preparers in ``local/``).
"""

__version__ = "0.1.0"
