"""Floor 2: corpora and what is computed from audio before any model.

``corpus`` (manifest conventions of the preparers in ``local/``, label maps), ``folds``
(speaker-independent cross-validation), ``eval_corpora`` (the evaluation corpora of cross-corpus
scoring), ``audio`` (reading any audio as 16 kHz mono), ``audio_screen`` (stage 1's check of every
file), ``text`` (transcripts, character vocabularies), ``features`` (spectrogram, MFCC, pitch,
eGeMAPS, augmentation), ``datasets`` (datasets over manifests, length-bucketed batches), ``dialog``
(the previous turns IAAN reads).

May import: utils.
"""
