"""A pipe that wakes an OVSDB poll loop from another thread: ``wake()``
from any thread, ``drain()`` and ``wait(poller)`` on the loop's own."""

import os

import ovs.poller


class Wakeup:
    def __init__(self):
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)

    def wake(self):
        os.write(self._w, b"x")

    def drain(self):
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass

    def wait(self, poller):
        poller.fd_wait(self._r, ovs.poller.POLLIN)

    def close(self):
        os.close(self._r)
        os.close(self._w)
