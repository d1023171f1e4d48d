"""Floor 5: representation stores, stage 4.

``store`` (the store format, reading and atomic writing), ``writing`` (an ASR model's layers or a
feature extractor's output into a store), ``planning`` (bytes a dump will write, the disk check),
``corpus_dump`` (stage 4's steps for one corpus).

May import: utils, data, models, upstreams, asr.
"""
