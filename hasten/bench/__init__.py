"""Benchmarks and comparisons, one place: ``hasten knobs bench`` (:mod:`.knobs`), ``hasten rollouts
bench`` (:mod:`.rollouts`), and ``hasten compare``: the denoising peers (:mod:`.peers`), their
comparison (:mod:`.compare`) and its report (:mod:`.compare_report`), and the reasoning comparison
(:mod:`.compare_reasoning`)."""
