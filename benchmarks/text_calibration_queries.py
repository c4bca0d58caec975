"""Queries for ``benchmarks/text_calibration.py``, written (and committed) before any run of
the calibration on the photos of ``benchmarks/text_search.py`` part (b).

- PRESENT: a correct photo is in the collection (relevant photos as prefixes of
  ``scene/file``, the names of ``text_search.real_photos``), whether or not the model finds it;
- ABSENT: real things that no photo of the collection shows;
- GIBBERISH: no meaning at all.
"""

PRESENT = {
    "a tabby cat lying down": ["skimage/chelsea"],
    "a coffee cup": ["skimage/coffee"],
    "a space shuttle launch": ["skimage/rocket"],
    "a photographer with a tripod": ["skimage/camera"],
    "a wall clock": ["skimage/clock"],
    "a motorbike": ["skimage/motorcycle"],
    "a horse silhouette": ["skimage/horse"],
    "a newspaper page": ["skimage/page"],
    "coins on a table": ["skimage/coins"],
    "an astronaut in a spacesuit": ["skimage/astronaut"],
    "the full moon": ["skimage/moon"],
    "a cathedral": ["sacre_coeur/", "kremlin/", "kn-church/", "church/", "berlin/", "tyn/"],
    "a military submarine": ["submarine/", "submarine2/"],
    "a football stadium": ["stadium/"],
    "a snow covered street": ["kyiv/01", "strahov/01", "vatutin/01", "bridge/", "stadium/02", "submarine/01",
                              "submarine2/"],
    "a monument": ["vatutin/", "warsaw/", "petrzin/02", "maidan/01"],
    "a basilica on a hill": ["sacre_coeur/"],
    "a royal palace": ["charlottenburg/", "him/", "warsaw/"],
    "a river": ["flood/", "ministry/", "maidan/02", "kyiv/"],
    "a street at night": ["flood/01", "maidan/02", "ministry/01", "tyn/01", "rovenki/01", "kyiv_dolltheater2/01"],
}

ABSENT = [
    "a giraffe", "a pizza", "a laptop computer", "a shark in the ocean", "a tennis racket", "a banana",
    "a violin", "a hamburger", "an elephant", "a toaster", "a strawberry", "a goldfish", "a zebra", "a pineapple",
    "a teddy bear", "a dishwasher", "a lobster", "a pair of sneakers", "a bowl of soup", "a parrot",
]

GIBBERISH = [
    "asdfgh qwerty", "xkcd zzqv blorp", "lorem ipsum dolor", "qwertyuiop", "hjkl hjkl", "zxcvbnm asdf",
    "flibber jabber wock", "blah blah", "aaaa bbbb cccc", "mnbvc poiuy", "grmbl frtz", "ooo", "xyz 123 qq",
    "trrrr vvvv", "jkjkjk lplp",
]
