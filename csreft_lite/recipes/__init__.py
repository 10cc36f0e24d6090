"""Recipes: complete, configurable runs of a paper's experiment. ``alpacaeval``: CS-ReFT on Llama-2-7B, trained on
UltraFeedback, scored on AlpacaEval (notebook 05; ``python -m csreft_lite.recipes.alpacaeval --help``)."""
