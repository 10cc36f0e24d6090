"""Reference answers to the notebooks' exercises: one module per notebook, same names and
signatures as the stubs in the notebook. Try the exercise first; the checkers in
``csreft_lite.checks`` compare your function with these."""
