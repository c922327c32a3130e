"""``embedded:shapes``: procedural shapes (:mod:`.data`), the generator recipe (:mod:`.recipe`),
the evaluation classifier (:mod:`.classifier`), ``hasten generator eval`` (:mod:`.evaluate`) and the
shipped weights (``weights/``)."""
