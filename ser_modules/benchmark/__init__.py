"""Floor 8: ``python -m ser_modules.benchmark``: how fast the toolkit trains and dumps on this machine.

``run`` (the command and its report), ``machine`` (GEMM rate, memory measurement), ``steps``
(training steps of every model), ``stage_rates`` (stages 4-5 and stage 1 measured).

May import: utils, data, models, upstreams, asr, dump, ser, report, inference.
"""
