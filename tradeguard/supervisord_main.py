"""supervisord as ``tradeguard run`` runs it: a closed terminal (SIGHUP) stops everything.

Plain supervisord takes SIGHUP as "reload the configuration and restart every program"; in the
foreground of a terminal that is the signal of the terminal going away, and the run must end
with it (each program then stops through its own SIGTERM handler). Output into a pipe whose
reader is gone (``tradeguard run | tee log`` after Ctrl-C) is dropped quietly instead of a
traceback per line. Everything else is supervisord's own ``main``.
"""
from __future__ import annotations

import signal
import sys

from supervisor import loggers
from supervisor.options import ServerOptions
from supervisor.states import SupervisorStates
from supervisor.supervisord import go


class RunServerOptions(ServerOptions):
    def setsignals(self) -> None:  # noqa: D401 - supervisor API
        super().setsignals()
        receive = self.signal_receiver.receive
        signal.signal(signal.SIGHUP, lambda _sig, frame: receive(signal.SIGTERM, frame))


_report_error = loggers.Handler.handleError


def _quiet_broken_pipe(handler: loggers.Handler) -> None:
    if not isinstance(sys.exc_info()[1], BrokenPipeError):
        _report_error(handler)


def main(argv: list[str] | None = None) -> None:
    """supervisord's main loop with :class:`RunServerOptions` (no profiling, no test mode)."""
    loggers.Handler.handleError = _quiet_broken_pipe
    first = True
    while True:
        options = RunServerOptions()
        options.realize(argv, doc=__doc__)
        options.first = first
        options.test = False
        go(options)
        options.close_httpservers()
        options.close_logger()
        first = False
        if options.mood < SupervisorStates.RESTARTING:  # restarts come only over XML-RPC
            break


if __name__ == "__main__":
    main(sys.argv[1:])
