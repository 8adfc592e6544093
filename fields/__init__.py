"""fields: NeRF fields, one renderer and one trainer whose training set can change while it trains.

Modules: ``encodings`` (hash grid with a tinycudann adapter, tri-plane, frequency, spherical
harmonics), ``field`` (density / outputs split, scene contraction, appearance embeddings),
``sampling`` (ray intervals, occupancy grid), ``rendering`` (volume rendering), ``datasets``
(the updatable ray dataset), ``masks`` (object captures: visual-hull box, mask loss),
``trainer`` (training, checkpoints, evaluation), ``evaluation`` (colour-corrected metrics)
and ``api`` (``train`` / ``render`` behind the CLI).
"""
