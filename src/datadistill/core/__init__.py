"""The base layer: errors, typed options, configs, atomic files and locks, progress, distributed helpers,
optional dependencies, the registry type and the version."""
