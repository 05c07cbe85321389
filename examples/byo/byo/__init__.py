"""A user project outside mtlsweep: its own data (`byo.data`), model (`byo.nets`) and task
(`byo.tasks`), plugged into a sweep by import path (see ../sweep.yaml). Only numpy and torch."""
