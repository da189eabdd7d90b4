"""Pruning: the three HYDRA phases and the transfer of weights between them (`phases`)."""
