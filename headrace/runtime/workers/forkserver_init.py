"""Imported by the fork server as a preload (``WorkerPool.start``), and by nothing else:
the fork server dies with the daemon that started it (see ``lifeline``)."""

from __future__ import annotations

from headrace.runtime.workers.lifeline import die_with_parent

die_with_parent()
