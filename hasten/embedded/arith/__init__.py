"""``embedded:arith``: procedural arithmetic problems and their character tokenizer (:mod:`.data`),
the reasoner recipe (:mod:`.recipe`) and the shipped weights (``weights/``)."""
