"""Adapters to other training frameworks, each imported only when used.

``ravine.integrations.lightning``: :class:`~ravine.integrations.lightning.DiagnosticsCallback`,
ravine's training monitor as a Lightning callback. Importing ``ravine`` (or this package) never
imports Lightning; importing that module does.
"""
