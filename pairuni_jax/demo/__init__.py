"""The learnable demo world: the tiny VQ, reward CLIP and warm-started policy that ``pairuni
train`` (no arguments) trains against, and the trainers that build them (``scripts/build_demo_*``)."""
