"""`nsql-med utility`: does adding NeuroSQL scans make a small-data model better, and better than classic augmentation?

``tasks`` reads what is predicted, ``design`` splits subjects, ``augment`` is the classic
augmentation, ``synthetic`` fits NeuroSQL on the training subjects only, ``networks``
trains and scores the downstream network, ``report`` summarises, ``run`` drives the grid.
"""
