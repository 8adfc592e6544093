"""HyperDreamer (issue 23): one image to a relightable, region-editable 3D asset."""
