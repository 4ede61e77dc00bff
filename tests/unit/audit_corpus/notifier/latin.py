# -*- coding: latin-1 -*-
"""Messages in French: café, crème."""

import requests

GREETING = "Bonjour, ça va ?"


def announce() -> None:
    requests.post("http://push:9000/broadcast", data=GREETING.encode("latin-1"))  # expect: CM001
