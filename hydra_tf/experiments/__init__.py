"""Experiments: what runs the whole flow and reports it.

- `pipeline`: the main job (pretrain -> prune -> finetune, and LWM), cached
  stages, its results table;
- `reproduce`: the multi-seed, multi-architecture study;
- `records`: the typed rows and `results.json` of both;
- `plots`: the figures.
"""
