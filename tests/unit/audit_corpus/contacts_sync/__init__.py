"""A contacts sync service: dataclass clients, typed attributes and a callable job object."""
