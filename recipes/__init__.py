"""mmvid's recipes, shipped as the package data ``mmvid._recipes`` (read by :mod:`mmvid.config.recipes`)."""
