"""Entry points of the recipe stages 2-6, run by ``run.sh`` as ``python -m ser_modules.stages.<name>``.

Stage 1 (data preparation) is ``local/prepare_data.py``. Every stage takes the arguments of
:func:`ser_modules.stages.common.stage_parser` followed by ``--`` and free ``key=value`` overrides.
Floor 8: each stage's ``main`` only wires the library's steps together.

May import: utils, data, models, upstreams, asr, dump, ser, report, inference.
"""
