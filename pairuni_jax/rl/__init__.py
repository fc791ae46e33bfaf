"""Pair-GRPO: advantages, pair weights, the clipped policy loss, log-probs and the train step."""
