"""The run configuration: everything one trial needs, read from YAML and validated in one place.

`mtl.config.run.parse_run_config` turns a mapping (a sweep YAML without its orchestration keys)
into a frozen `RunConfig`; `mtl.config.build` turns a `RunConfig` into datasets and a model;
`mtl.config.paths` reads and writes config values by dotted path (``training.lr``), which is
how a sweep axis names any setting. The readers in `mtl.config.reading` make every failure one
`ConfigError` that starts with the path of the bad value.

This package imports nothing heavy on import; its modules are imported by name.
"""
from mtl.config.reading import ConfigError

__all__ = ["ConfigError"]
