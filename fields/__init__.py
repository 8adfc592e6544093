"""fields: scene models trained by one trainer whose training set can change while it trains.

Modules: ``scene_model`` (the seam every representation plugs into, the model registry),
``nerf_model`` (radiance field + occupancy grid), ``gaussian_model`` (3D Gaussians) with
``splatting`` (torch rasterizer, gsplat on CUDA), ``densify`` (3DGS density control) and
``gaussian_ply`` (the 3DGS PLY); ``encodings``, ``field``, ``sampling``, ``rendering`` (NeRF
parts); ``datasets`` (the updatable ray / patch / view dataset), ``masks`` (object captures),
``scene_box``, ``trainer`` + ``trainer_config`` (training, hooks, the editing interface),
``checkpoints``, ``evaluation`` (held-out and colour-corrected metrics), ``export`` and ``api``
(``train`` / ``render`` behind the CLI).
"""
