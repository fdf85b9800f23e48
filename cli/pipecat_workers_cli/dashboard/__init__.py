"""The live dashboard: a local web page of a running project.

:mod:`.traffic` sums up what an observer sees on the bus, :mod:`.snapshot` joins it with the
supervisor's status and the span files, :mod:`.server` serves the page and its event stream,
:mod:`.listener` holds the socket and the token. The page itself is plain HTML, CSS and
JavaScript in ``static/``.
"""
