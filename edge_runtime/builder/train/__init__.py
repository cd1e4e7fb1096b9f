"""Fine-tuning the backbone on the catalogue at build time (the `[train]` extra: torch, packaging host only).

The device runtime and the bundle never need torch: the fine-tuned weights go back through the project's own
ONNX graph builder (`builder.backbone`), so the bundle keeps today's model contract. Nothing outside this room
imports torch; `builder.finetune` (no torch) decides whether to call in here.
"""
