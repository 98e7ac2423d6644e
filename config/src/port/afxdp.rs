//! An AF_XDP port's settings: the host interface and queue its socket binds to, and where
//! its XDP program runs.

use serde::{Deserialize, Serialize};

use super::{check_port_ifname, FieldError, KindSettings, KindWords, Live};

/// Where an AF_XDP port's XDP program runs and who copies its frames (OVS's `xdp-mode`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Native with zero-copy, else native, else generic: the first the interface takes.
    #[default]
    BestEffort,
    /// In the driver, frames in the port's memory: the driver must offer zero-copy.
    NativeWithZerocopy,
    /// In the driver, frames copied by the kernel.
    Native,
    /// On socket buffers, after the driver: any interface.
    Generic,
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XdpMode::BestEffort => "best-effort",
            XdpMode::NativeWithZerocopy => "native-with-zerocopy",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        })
    }
}

/// Highest interface queue an AF_XDP port may bind to.
pub const MAX_XDP_QUEUE: u32 = 1023;

/// What only AF_XDP ports have.
// Without `deny_unknown_fields`: only the kind's own fields reach it (PortSpec::from_fields
// refuses the others by name), and the API's schema composes it with the fields every port
// has, which a closed object would refuse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct AfXdpSettings {
    /// The interface whose queue the socket binds to (the port's name when left out); it
    /// must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,15}$")]
    pub ifname: Option<String>,
    /// The interface queue the socket binds to (0 when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1023, default = 0)]
    pub queue: Option<u32>,
    /// Where the XDP program runs (`best-effort` when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_mode: Option<XdpMode>,
}

impl AfXdpSettings {
    pub const FIELDS: &'static [&'static str] = &["ifname", "queue", "xdp_mode"];
}

impl KindSettings for AfXdpSettings {
    fn fields(&self) -> &'static [&'static str] {
        Self::FIELDS
    }

    fn check(&self, port: &str) -> Result<(), FieldError> {
        check_port_ifname(self.ifname.as_deref(), port)?;
        if let Some(q) = self.queue {
            check_xdp_queue(q).map_err(|m| FieldError::invalid("queue", m))?;
        }
        Ok(())
    }

    fn fill_defaults(&mut self, port: &str) {
        self.ifname.get_or_insert_with(|| port.to_owned());
        self.queue.get_or_insert(0);
        self.xdp_mode.get_or_insert(XdpMode::BestEffort);
    }

    /// Never: the switch finishes every frame itself, and takes none that asks for more.
    fn offloads(&self) -> bool {
        false
    }

    fn ifname<'a>(&'a self, port: &'a str) -> Option<&'a str> {
        Some(self.ifname.as_deref().unwrap_or(port))
    }

    /// The XDP mode in effect, and the one asked for when they differ.
    fn words(&self, port: &str, live: &Live<'_>) -> KindWords {
        let ifname = self.ifname.as_deref().unwrap_or(port);
        let queue = self.queue.unwrap_or(0);
        let asked = self.xdp_mode.unwrap_or_default().to_string();
        let on = format!("interface {ifname} queue {queue}");
        let (now, mode) = match live.attach_mode {
            Some(m) if m == asked => (m.to_owned(), m.to_owned()),
            Some(m) => (m.to_owned(), format!("{m} ({asked} asked)")),
            None => ("-".to_owned(), format!("{asked} asked")),
        };
        KindWords {
            mode: "afxdp".into(),
            attached_to: format!("{ifname} queue {queue}"),
            summary: format!("{on}, xdp {now}"),
            detail: format!("{on}, xdp {mode}"),
            own_queues: false,
        }
    }

    fn describe(&self) -> String {
        format!(
            "ifname={} queue={} xdp_mode={}",
            self.ifname.as_deref().unwrap_or(""),
            self.queue.unwrap_or(0),
            self.xdp_mode.unwrap_or_default()
        )
    }
}

/// Checks an AF_XDP port's queue number (whether the interface has it, the kernel says).
pub fn check_xdp_queue(queue: u32) -> Result<(), String> {
    if queue > MAX_XDP_QUEUE {
        return Err(format!(
            "queue must be between 0 and {MAX_XDP_QUEUE}, not {queue}"
        ));
    }
    Ok(())
}
