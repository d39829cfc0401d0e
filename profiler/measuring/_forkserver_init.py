"""Imported first in the measuring forkserver (never in the parent): Ctrl-C in a terminal signals
the whole process group, and the parent, not the server or its children, decides what stops
(``isolated.measure`` terminates a running child), so the server ignores SIGINT and its
children inherit that."""
import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
