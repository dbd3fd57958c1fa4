"""Configs under a bit budget: the integer program, strategies and trust region, Fisher scores,
active learning, evaluation, activation bits, export and transfer to a fine-tune (docs/search.md)."""
