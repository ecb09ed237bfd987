"""Whether a service's measured choices are in force, and its GetDeviceInfo / GetModel value."""

from __future__ import annotations

from enum import Enum
from typing import cast

from chargpt.v1 import common_pb2


class CalibrationState(Enum):
    """A host is measured once, in the background (no RPC waits for it); the services report which choices hold."""

    PENDING = "pending"  # being measured: the documented defaults are in force meanwhile
    MEASURED = "measured"  # the measured choices are in force
    NOT_MEASURED = "not_measured"  # nothing is measured on this device (only CPUs are): its defaults hold
    FAILED = "failed"  # the measurement failed (logged): the defaults stay in force

    def proto(self) -> common_pb2.CalibrationState:
        return cast(common_pb2.CalibrationState, common_pb2.CalibrationState.Value(f"CALIBRATION_STATE_{self.name}"))
