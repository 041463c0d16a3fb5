"""The training engine: one explicit loop that balancers and augmentations attach to at named hook points.

Where to find a stage of a step:

* :mod:`mmvid.engine.loop`: :func:`~mmvid.engine.loop.train`, read top to bottom, one comment per stage, and
  :func:`~mmvid.engine.loop.build_training`, which builds the model, optimizer and plug-ins;
* :mod:`mmvid.engine.step`: one optimisation step (:func:`~mmvid.engine.step.train_step`) and its hooks;
* :mod:`mmvid.engine.evaluation`: the evaluation after an epoch and the train-set imbalance monitor;
* :mod:`mmvid.engine.checkpoints`: what a checkpoint holds, writing and reading it safely, resuming;
* :mod:`mmvid.engine.progress`: the position inside an epoch, the progress bars, Ctrl-C as a stop request;
* :mod:`mmvid.engine.context`: what hooks see (``TrainContext``) and what a step touches (``TrainingParts``);
* :mod:`mmvid.engine.loaders`: the train / val / test rows and their loaders;
* :mod:`mmvid.engine.runtime`: device, mixed precision, seeds and RNG state.

Import each name from its module; this package re-exports nothing.
"""
