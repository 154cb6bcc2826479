"""LaMAR semantic signals: per-item texts an LLM infers from metadata, generated crash-safely, measured, used.

Four modules, lowest first (each imports only the ones above it in this list):

* :mod:`agentrec.signals.cleaning`: :func:`~agentrec.signals.cleaning.clean_signal` turns a raw
  generation into a usable signal (or ``""``); the aspect names and the cleaner's version.
* :mod:`agentrec.signals.store`: the durable, crash-safe signal set on disk
  (:class:`~agentrec.signals.store.SignalSet`: manifest, journal, lock) and its use as item text
  (:func:`~agentrec.signals.store.load_signals`).
* :mod:`agentrec.signals.generate`: :func:`~agentrec.signals.generate.generate_signals` fills a set
  with an engine, chunk by chunk, resuming where a killed run stopped.
* :mod:`agentrec.signals.report`: :func:`~agentrec.signals.report.signal_report` measures a set
  (coverage, diversity, duplicates, novelty) and can write a de-duplicated copy.

Nothing is imported here: ``import agentrec.signals`` stays light.
"""
