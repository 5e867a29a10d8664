"""Not the product: the demonstration (``vmsnap demo``) and its toy
application, the loop-filesystem helpers the demo and the tests share, and
the benchmark (``vmsnap bench``) with its statistics.  The product imports
nothing from here; the CLI imports it only for those two commands."""
