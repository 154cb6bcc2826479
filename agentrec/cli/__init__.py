"""The ``agentrec`` command line: a thin typer layer, one module per command group.

:mod:`agentrec.cli.main` assembles the root app (``agentrec = "agentrec.cli.main:main"``); the groups are
:mod:`~agentrec.cli.data`, :mod:`~agentrec.cli.train` (train, evaluate), :mod:`~agentrec.cli.index`,
:mod:`~agentrec.cli.predict`, :mod:`~agentrec.cli.compare` and :mod:`~agentrec.cli.signals`; what they
share (choices from the registries, the engine options, range checks) is in :mod:`~agentrec.cli.options`,
and ``--config FILE`` in :mod:`~agentrec.cli.configfile`.
"""
