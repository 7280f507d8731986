"""The application on top of the library: the ``nrnn`` command line and what it runs (``docs/cli.md``).

* :mod:`.cli`: argument parsing, one-line errors, signals; :mod:`.commands`: one handler per command;
* the run file: :mod:`.run_config` (the pydantic schema), :mod:`.schema_types`, :mod:`.schema_errors` (one-line
  messages), :mod:`.noise_schema` (the ``noise:`` section from ``NoiseConfig``), :mod:`.schema_doc`
  (``nrnn schema``: JSON Schema and ``docs/run-file.md``);
* tables: :mod:`.data` (reading, preparing, the split), :mod:`.checks` (column checks), :mod:`.timeaxis` (any
  pandas calendar to steps and back), :mod:`.datasets` (the pytorch-forecasting windows);
* training: :mod:`.training` (model, fit, run folder), :mod:`.callbacks`, :mod:`.tracking` (loggers);
* a run on disk: :mod:`.runs` (JSON sidecar, loading), :mod:`.safe_load` (weights-only checkpoints with an
  allow-list), :mod:`.outputs` (all-or-nothing output folders, SIGINT/SIGTERM);
* :mod:`.predict` (``nrnn predict`` and ``predict()``); :mod:`.report`, :mod:`.report_tables`, :mod:`.scoring`,
  :mod:`.variants`, :mod:`.stats` (``nrnn robustness``: variants over seeds, paired statistics);
* :mod:`.demo`, :mod:`.bench`, :mod:`.benchmarking`, :mod:`.progress`, :mod:`.errors`.

Nothing in the library imports from here.
"""
