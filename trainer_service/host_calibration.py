"""The trainer host's CPU figures for `auto`: read from the cache, else measured once in the background.

GetDeviceInfo had run the measurement inside the RPC (over 60 s on a busy host with an empty data directory,
issue 23); now no RPC waits for it: until it is done, GetDeviceInfo and job plans use the size table's defaults
and say so (CalibrationState.PENDING).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from chargpt.core.calibration import Calibrator, train_entry
from chargpt.core.device import SizeProfile
from chargpt.core.measurements import GemmPeak, TrainStep
from chargpt.core.training_choices import SizeChoice, choose_cpu_size, profile_config
from chargpt.wire.calibration_state import CalibrationState

log = logging.getLogger(__name__)


class NotCached(LookupError):
    """A figure the decision needs has not been measured on this host yet."""


class HostCalibration:
    """The measured CPU size choice and GEMM peaks of this host, once known."""

    def __init__(self, calibrator: Calibrator) -> None:
        self.calibrator = calibrator
        self.state = CalibrationState.PENDING
        self.choice: SizeChoice | None = None
        self.peak: GemmPeak | None = None
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calibration")
        self._running: Future[None] | None = None

    def start(self) -> None:
        """Take the cached figures if every one is there, else measure in the background (once at a time)."""
        with self._lock:
            if self.state is CalibrationState.MEASURED or (self._running and not self._running.done()):
                return
            try:
                self._publish(self._decide(measure=False))
            except NotCached:
                self.state = CalibrationState.PENDING
                self._running = self._worker.submit(self._measure)

    def recalibrate(self) -> None:
        """Forget this host's figures and measure again in the background (the defaults hold meanwhile)."""
        with self._lock:
            if self._running and not self._running.done():
                return  # measuring already: what it writes is new
            self.calibrator.clear()
            self.state, self.choice, self.peak = CalibrationState.PENDING, None, None
        self.start()

    def size_choice(self) -> SizeChoice | None:
        """The measured choice, or None while it is not known (starting the measurement if it is not running)."""
        if self.state is not CalibrationState.MEASURED:
            self.start()
        return self.choice

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _measure(self) -> None:
        try:
            decided = self._decide(measure=True)
        except BaseException:
            log.exception("calibrating this host failed; `auto` keeps the size table's defaults")
            self.state = CalibrationState.FAILED  # never left PENDING
            raise
        with self._lock:
            self._publish(decided)

    def _publish(self, decided: tuple[SizeChoice, GemmPeak]) -> None:
        self.choice, self.peak = decided
        self.state = CalibrationState.MEASURED

    def _decide(self, measure: bool) -> tuple[SizeChoice, GemmPeak]:
        """The size choice and GEMM peaks, measuring what is missing (measure) or raising NotCached."""
        calibrator = self.calibrator

        def step(profile: SizeProfile) -> TrainStep:
            config, batch = profile_config(profile), profile.batch_size
            found = calibrator.train_step(config, batch) if measure else calibrator.cached(
                train_entry(config, batch), TrainStep)
            if found is None:
                raise NotCached(train_entry(config, batch))
            return found

        peak = calibrator.gemm_peak() if measure else calibrator.cached("gemm", GemmPeak)
        if peak is None:
            raise NotCached("gemm")
        return choose_cpu_size(step), peak
