"""Multi-process training on torch.distributed (DDP), in two modules:

* :mod:`mmvid.distributed.collectives`: what the loop and the plug-ins call inside a process group (sums,
  broadcasts, gathers, gradient averaging, the sampler and its shard of an epoch's order);
* :mod:`mmvid.distributed.launch`: starting or joining the group and running the loop in every rank.

The loop imports the collectives only; launching imports the loop.
"""
