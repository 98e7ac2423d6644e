//! Security groups (issue 39; docs/architecture.md, "Security groups"): stateful per-port
//! filtering with OpenStack's model. This crate holds what needs no switch around it:
//!
//! - [`flow`]: what a frame is to the filter, read once from its headers (copied to the
//!   stack first): addresses, protocol, ports or ICMP type, code and id, TCP flags, and
//!   where a fragment stands; the usual frame, a plain TCP or UDP datagram, straight into
//!   its connection's key ([`flow::Datagram`]), judged from it
//!   ([`firewall::check_datagram`]);
//! - [`rules`]: the rule model (direction, ethertype, protocol, port range, remote prefix
//!   or group), rules compiled per port when they change, and the verdict for a flow;
//! - [`conntrack`]: the connection table, sized once and shared by the workers without a
//!   lock;
//! - [`tracker`]: what each packet does to its connection (TCP's states with liberal
//!   window tracking, UDP and ICMP by time) and how long each state lives;
//! - [`firewall`]: the verdict on one frame at one port, joining the four: the implicit
//!   allows, the port's rules, the table and the tracker, each side of a connection
//!   checked once under the rules' epoch, again when they change.
//!
//! The switch (`vringswitch_switch::security_groups`) reads each frame's headers once per
//! burst, makes its [`firewall::Site`] (key, hash, and the connection once found), and asks
//! [`firewall`] for the verdict at each port with groups the frame crosses.
#![deny(unsafe_code)]

pub mod conntrack;
pub mod firewall;
pub mod flow;
#[allow(unsafe_code)] // The one place: memory of its own, zeroed, with huge pages (see there).
mod huge;
pub mod rules;
pub mod tracker;

pub use flow::{classify, Classified, Flow, Fragment, Quoted, L4};
pub use rules::{Compiled, Direction, Prefix, Remote, Rule};
