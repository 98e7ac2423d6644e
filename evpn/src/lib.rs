//! BGP EVPN (RFC 7432, RFC 8365) for vringswitch's VXLAN ports, with FRR as the BGP speaker.
//!
//! FRR's zebra only reads and writes kernel devices, and the switch's data path is not
//! one. So each EVPN segment has a silent [`mirror`] in the kernel that zebra treats as a
//! VTEP of its own: the host's MAC addresses on the segment are written on it as static
//! entries (zebra sends them as type-2 routes), and what zebra installs from the other
//! hosts' routes (remote MACs behind their tunnel ends, the flood list of type-3 routes) is
//! read back over netlink ([`routes`]) and handed to the data path ([`Segment`]). No frame
//! crosses the mirror; the data path sends and receives tunnel packets itself.
//!
//! A [`Controller`] runs one segment's control in a thread of its own.

pub mod controller;
pub mod hold;
pub mod mirror;
pub mod routes;

pub use controller::{ControlState, Controller, Ending, FrrWatch, Segment, Status, StatusHandle};
pub use mirror::{mac_text, Mirror, MirrorSpec, Names};
pub use routes::{KernelEntry, Mac, RemoteRoutes};

/// Why a segment's control failed.
#[derive(Debug, thiserror::Error)]
pub enum EvpnError {
    #[error("{what}: {error}")]
    Netlink { what: String, error: String },
    #[error("{0}")]
    System(String),
}

impl EvpnError {
    fn netlink(what: String, e: rtnetlink::Error) -> EvpnError {
        let error = match &e {
            rtnetlink::Error::NetlinkError(m) => match m.code {
                Some(c) => std::io::Error::from_raw_os_error(-c.get()).to_string(),
                None => e.to_string(),
            },
            _ => e.to_string(),
        };
        EvpnError::Netlink { what, error }
    }
}
