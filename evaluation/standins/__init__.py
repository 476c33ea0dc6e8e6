"""Stand-ins for what the tests, the benchmarks and the offline demo cannot download: models and data built here.

- :mod:`evaluation.standins.synthetic`: captioned pictures of coloured shapes, deterministic from a seed;
- :mod:`evaluation.standins.tiny_clip`: the tiny CLIP trained on them (the tests' ``WITHSENSE_MODEL``), the
  real ViT-B/32 architecture with random weights (benchmarks) and CLIP's BPE tokenizer rebuilt offline;
- :mod:`evaluation.standins.baseline_encoders`: a tiny BERT and ResNet for the proof of concept's baseline;
- :mod:`evaluation.standins.demo`: the synthetic demo dataset in the seed layout (``demo_dataset/``).

The service never needs them: the production image (``.dockerignore``) and the wheel leave this package out,
and ``withsense eval`` imports it only for ``builtin:`` models and ``--demo``, saying so when it is missing.
"""
