"""Floor 7: stage 6, what a finished experiment shows.

``results`` (result rows, the papers' tables, ``RESULTS.md``), ``attributes`` (the dimensional-emotion rows and
table), ``representations`` (t-SNE of the layers, loudness units), ``cross_corpus`` (the cross-corpus table),
``curves`` (training curves), ``upstream`` (upstream_probe's tables and figures), ``plots`` (PNG figures), ``formatting``
(numbers and Markdown tables).

May import: utils, data, models, upstreams, asr, dump, ser.
"""
