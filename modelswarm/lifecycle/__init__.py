"""The model lifecycle, in the order a model goes through it: bundle -> image -> rollout -> ledger.

`pipeline` strings the steps together once, for the CLI and the pyinfra deploys alike.
"""
