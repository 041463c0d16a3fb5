"""What is read from trained runs: evaluation, robustness, figures, the HTML report and the diagnosis.

Above the engine (it loads checkpoints) and below the commands (mmvid.api, mmvid.cli)."""
