"""A progress line on stderr while something slow (model loading) runs."""
import sys
import threading
import time


class Progress:
    """`with Progress("loading model"):` prints the label, a dot every `interval` seconds,
    then "done in X s" (or "failed")."""

    def __init__(self, label, stream=None, interval=0.5):
        self.label, self.stream, self.interval = label, stream or sys.stderr, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dots, daemon=True)

    def __enter__(self):
        self._started = time.time()
        self._write(self.label + " ")
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stop.set()
        self._thread.join()
        self._write(" failed\n" if exc_type else " done in {:.1f} s\n".format(time.time() - self._started))
        return False

    def _dots(self):
        while not self._stop.wait(self.interval):
            self._write(".")

    def _write(self, text):
        self.stream.write(text)
        self.stream.flush()
