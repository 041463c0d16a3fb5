"""``mmvid diagnose``: what modality imbalance looks like on a user's own data, one module per concern.

Imports go down this list, never up:

* ``shapley``: exact Shapley values over modality coalitions (and BalanceBenchmark's unweighted figure);
* ``passes``: one eval-mode pass of a model over a split (features, every coalition's value, Eq. 5 masking);
* ``dominance``: the Shapley values summarised per split, class and sample;
* ``utilisation``: the bounded conditional utilisation rate; ``curves``: memorisation, rho and utilisation
  over the epochs of metrics.jsonl; ``probes``: linear probes on frozen features;
* ``runs``: the runs diagnose trains (the fused run within a budget, one run per modality alone);
* ``plots`` and ``page``: the figures, the Rich summary and diagnosis.html;
* ``diagnose``: :func:`~mmvid.results.diagnosis.diagnose.diagnose_run`, every measure of one run and its files;
* ``command``: :func:`~mmvid.results.diagnosis.command.run_diagnose` (``mmvid diagnose``, ``--dataset``,
  ``--try``).
"""
