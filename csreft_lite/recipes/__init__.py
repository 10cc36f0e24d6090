"""Recipes: complete, configurable runs that reproduce a paper's experiment with ``csreft_lite``.

- ``alpacaeval``: CS-ReFT on Llama-2-7B, trained on UltraFeedback, scored on AlpacaEval 1.0
  (notebook 05). ``python -m csreft_lite.recipes.alpacaeval --help``.
"""
