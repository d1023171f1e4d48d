"""Floor 7: stage 6, what a finished experiment shows.

``results`` (result rows, the papers' tables, ``RESULTS.md``), ``cross_corpus`` (the cross-corpus
table), ``upstream`` (upstream_probe's tables and figures), ``plots`` (PNG figures), ``formatting``
(numbers and Markdown tables).

May import: utils, data, models, upstreams, asr, dump, ser.
"""
