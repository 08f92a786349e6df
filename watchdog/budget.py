"""The restart budget: at most ``budget`` restarts per ``window_s``, with exponential backoff
between consecutive restarts that did not bring a healthy bot back."""
from __future__ import annotations

from dataclasses import dataclass, field

BACKOFF_CAP_S = 60.0


@dataclass
class RestartBudget:
    budget: int
    window_s: float
    restarts: list[float] = field(default_factory=list)  # unix times of restarts in the window
    streak: int = 0  # consecutive restarts since the bot was last healthy

    def prune(self, now: float) -> None:
        """Forget restarts that left the window."""
        self.restarts = [t for t in self.restarts if now - t < self.window_s]

    def left(self, now: float) -> int:
        """Restarts still allowed in the window."""
        self.prune(now)
        return max(0, self.budget - len(self.restarts))

    def spent(self, now: float) -> bool:
        return self.left(now) == 0

    def backoff_s(self) -> float:
        """Wait before the next restart: 0 for the first, then 1, 2, 4 ... s (capped)."""
        return 0.0 if self.streak == 0 else min(BACKOFF_CAP_S, 2.0 ** (self.streak - 1))

    def record(self, now: float) -> None:
        """Count one restart."""
        self.prune(now)
        self.restarts.append(now)
        self.streak += 1

    def healthy(self) -> None:
        """The bot came back healthy: the next restart needs no backoff."""
        self.streak = 0

    def reset(self) -> None:
        """A person intervened (``tradeguard resume``): a fresh budget."""
        self.restarts.clear()
        self.streak = 0
