"""The application on top of the library: the ``nrnn`` command line and what it runs.

* :mod:`.cli`: argument parsing, one handler per command, one-line errors;
* :mod:`.run_config`: the run-file schema; :mod:`.data`: reading and checking tables; :mod:`.datasets`: the
  pytorch-forecasting windows; :mod:`.training`: the model, the fit and the artifacts; :mod:`.runs`: a run on
  disk; :mod:`.report`: robustness reports; :mod:`.demo`: ``nrnn demo``; :mod:`.bench` and
  :mod:`.benchmarking`: ``nrnn bench``; :mod:`.progress`, :mod:`.errors`: reporting and error classes.

Nothing in the library imports from here.
"""
