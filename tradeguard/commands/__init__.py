"""One module per command group of the ``tradeguard`` CLI; ``tradeguard.cli`` assembles them."""
