//! Interface discovery, used to turn a mistyped interface name into a clear error.

use crate::error::{pcap_message, CaptureError};

/// Names of every device libpcap can capture on (`pcap_findalldevs`), including `any`.
///
/// On Linux this includes interfaces that are down and pseudo-devices such as `nflog`.
pub fn list_interfaces() -> Result<Vec<String>, CaptureError> {
    let devices = pcap::Device::list().map_err(|e| CaptureError::Interfaces {
        message: pcap_message(&e),
    })?;
    Ok(devices.into_iter().map(|d| d.name).collect())
}

/// Fails with [`CaptureError::NoSuchDevice`] when `interface` is not among the devices libpcap
/// lists. If the list itself is unavailable the check is skipped and activation decides.
pub(crate) fn ensure_interface_exists(interface: &str) -> Result<(), CaptureError> {
    match list_interfaces() {
        Ok(names) if names.iter().any(|name| name == interface) => Ok(()),
        Ok(_) => Err(CaptureError::NoSuchDevice {
            interface: interface.to_owned(),
        }),
        Err(error) => {
            tracing::debug!(%interface, %error, "interface list unavailable; libpcap will decide");
            Ok(())
        }
    }
}
