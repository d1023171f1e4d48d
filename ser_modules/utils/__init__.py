"""Floor 1: what every other part uses, with no knowledge of speech or emotion.

``fileio`` (atomic writes, manifests, logging, staged outputs), ``audio_file`` (audio headers and
samples without torch, so stage 1's checks stay light), ``hparams`` (the recipes' HyperPyYAML layers and
overrides), ``jobs`` (worker pools, devices, cluster jobs, fault points), ``seeding`` (random generators
and their checkpointed state), ``environment`` (versions and git commit of a result), ``legacy_paths``
(module paths from before the package split, for older experiments and exports).

May import: nothing of the toolkit.
"""
