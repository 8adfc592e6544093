"""The nerfstudio integration: ``ns-train`` methods ``sceneforge`` (:mod:`.plugin`) and
``sceneforge-complete`` (:mod:`.complete`) and the ``sceneforge-data`` dataparser
(:mod:`.dataparser`), registered through the entry points in pyproject.toml. The modules need the
``[nerfstudio]`` extra in its own venv; this package file imports nothing from nerfstudio, so
importing ``sceneforge.nerfstudio`` alone never needs it.
"""
