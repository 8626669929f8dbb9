"""The ZeroMQ transport between stages: ``wire`` (the message format), ``sockets`` (``Publisher``,
``Subscriber``), ``control`` (a source stage's control socket) and ``keys`` (CurveZMQ)."""
