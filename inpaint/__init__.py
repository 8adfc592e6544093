"""Generative 3D scene completion (NeRFiller-style); arrives with its own issue."""
