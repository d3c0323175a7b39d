"""PyTorch zoo checkpoints <-> Flax variables for the ssl_jax model zoo (docs/CHECKPOINTS.md).

  torchvision.py  the core: torchvision-named state_dict <-> Flax variables, exact accounting
  families.py     zoo key layouts (containers, prefixes, renames, heads, input conventions)
  convert.py      file -> parts -> variables + metadata -> atomic Orbax directory
  verify.py       functional torch forward vs a converted directory (``--verify``)
  export.py       converted directory -> torch state_dict (``--to-torch``)
  __main__.py     the CLI: ``python -m checkpoints_convert --help``
"""
