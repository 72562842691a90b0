"""Names of the layer kinds, normalisations and initialisations that recipes may choose.

Kept free of torch so that the recipe schema, and with it `langinterp --help` and `langinterp recipe`,
load without importing torch; `langinterp.layers` takes its names from here.
"""

KINDS = ("continuous", "discontinuous", "polynomial")
NORMALIZATIONS = ("layer", "max_abs", "max_center", "none")
INITIALIZATIONS = ("linear", "constant_random", "uniform")
