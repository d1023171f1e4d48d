"""Floor 3: pretrained speech encoders as frozen layer providers, from local files only.

``formats`` (which kind a path is: transformers or SpeechBrain folder, openai-whisper or torchaudio
checkpoint; digests and names), ``checkpoints`` (reading the checkpoint files), ``encoders`` (the
frozen encoders and their layer taps), ``loading`` (load and describe an upstream), ``ctc`` (an
upstream adapted with a CTC head), ``top_blocks`` (the top blocks of an upstream, trainable, run from a stored
layer), ``cli`` (``python -m ser_modules.upstreams check``).

May import: utils, data.
"""
