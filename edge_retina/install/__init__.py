"""Safe bundle updates on a device: signed bundles installed into A/B slots, a self-test at start,
automatic rollback (docs/BUNDLE_FORMAT.md, "Installing on a device")."""
from edge_retina.install.slots import (
    MAX_TRIAL_STARTS,
    InstallReport,
    StartReport,
    install_bundle,
    read_status,
    rollback,
    start,
)
from edge_retina.install.state import (
    GOOD,
    REJECTED,
    TRIAL,
    InstallError,
    InstallState,
    SlotRecord,
    slot_path,
)

__all__ = [
    "GOOD",
    "MAX_TRIAL_STARTS",
    "REJECTED",
    "TRIAL",
    "InstallError",
    "InstallReport",
    "InstallState",
    "SlotRecord",
    "StartReport",
    "install_bundle",
    "read_status",
    "rollback",
    "slot_path",
    "start",
]
