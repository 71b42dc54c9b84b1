"""A user's own project, trained by ``ravine train`` (see ../README.md): data, model, loss."""
