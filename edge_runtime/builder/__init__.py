"""The packaging host's room: edge-build (``pipeline``) and edge-check (``check``), and the steps they share.

The build reads top to bottom in ``pipeline.run_build``; each step lives in its own module:

- ``inputs``: the catalogue (``catalogue``: folder tree or CSV, decoded once per input size), the backbone
  (``backbone``: the default EfficientNet-Lite0 exported without PyTorch, or ``--model``) and how variants are
  measured on this host;
- ``finetune``: whether and how the backbone is fine-tuned (no torch), ``train/``: the fine-tuning itself (the
  ``[train]`` extra: torch, packaging host only), ``holdout``: the photos and SKUs held out of training and
  ranking;
- ``embedding``: the activation clip, the catalogue's embeddings (+ colour, + augmented views from ``augment``)
  and the recognition head fitted on them: the one path edge-build and edge-check both take;
- ``variants``: every precision x input size (``quantize``), measured in a fresh process (``footprint``, whose
  child lives in ``run/footprint_probe.py``) and ranked (``ranking``); ``choose`` picks the one to ship;
- ``readiness/``: the seven-check checklist, the scale curve and their report;
- ``manifest``: the bundle's manifest, the build report and the summary.

Nothing here is imported on the device: the runtime (``run/``) never imports the builder, nor the builder the
runtime.
"""
