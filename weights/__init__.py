"""lit's package data (installed as ``lit.weights``): the registry of named weights
(``registry.json``), the weights lit trains and ships (safetensors), their model cards and
training logs. The ``make_*.py`` / ``*_cv.py`` scripts here rebuild them from a checkout and
are not installed. Read these files through :mod:`lit._resources` and :mod:`lit.hub`."""
