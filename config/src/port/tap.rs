//! A TAP port's settings: the host interface (made when missing), its MTU, whether
//! offloads are offered to the kernel.

use serde::{Deserialize, Serialize};

use super::{check_port_ifname, FieldError, KindSettings, KindWords, Live};

/// Smallest and largest MTU a TAP port may be given.
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65_500;

/// What only TAP ports have.
// Without `deny_unknown_fields`: only the kind's own fields reach it (PortSpec::from_fields
// refuses the others by name), and the API's schema composes it with the fields every port
// has, which a closed object would refuse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct TapSettings {
    /// The interface's name (the port's name when left out). Created when missing, and
    /// then removed with the port; an existing one is used as it is and left there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,15}$")]
    pub ifname: Option<String>,
    /// The MTU the interface is set to (left as it is when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 68, maximum = 65500)]
    pub mtu: Option<u32>,
    /// Whether checksum and segmentation offloads are offered to the kernel (true when
    /// left out). Off, the kernel sends complete frames and gets them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offloads: Option<bool>,
}

impl TapSettings {
    pub const FIELDS: &'static [&'static str] = &["ifname", "mtu", "offloads"];
}

impl KindSettings for TapSettings {
    fn fields(&self) -> &'static [&'static str] {
        Self::FIELDS
    }

    fn check(&self, port: &str) -> Result<(), FieldError> {
        check_port_ifname(self.ifname.as_deref(), port)?;
        if let Some(mtu) = self.mtu {
            check_mtu(mtu).map_err(|m| FieldError::invalid("mtu", m))?;
        }
        Ok(())
    }

    fn fill_defaults(&mut self, port: &str) {
        self.ifname.get_or_insert_with(|| port.to_owned());
    }

    fn show(&mut self) {
        self.offloads = Some(KindSettings::offloads(self));
    }

    /// The interface's MTU is set again while the port runs (the port reads it back every
    /// 250 ms anyway).
    fn live_fields(&self) -> &'static [&'static str] {
        &["mtu"]
    }

    fn offloads(&self) -> bool {
        self.offloads.unwrap_or(true)
    }

    fn ifname<'a>(&'a self, port: &'a str) -> Option<&'a str> {
        Some(self.ifname.as_deref().unwrap_or(port))
    }

    fn words(&self, port: &str, _live: &Live<'_>) -> KindWords {
        let ifname = self.ifname.as_deref().unwrap_or(port);
        let summary = format!("interface {ifname}");
        KindWords {
            mode: "tap".into(),
            attached_to: ifname.to_owned(),
            detail: match self.mtu {
                Some(mtu) => format!("{summary}, mtu {mtu}"),
                None => summary.clone(),
            },
            summary,
            own_queues: false,
        }
    }

    fn describe(&self) -> String {
        match self.mtu {
            Some(mtu) => format!("ifname={} mtu={mtu}", self.ifname.as_deref().unwrap_or("")),
            None => format!("ifname={}", self.ifname.as_deref().unwrap_or("")),
        }
    }
}

/// Checks a TAP port's MTU.
pub fn check_mtu(mtu: u32) -> Result<(), String> {
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(format!(
            "mtu must be between {MIN_MTU} and {MAX_MTU}, not {mtu}"
        ));
    }
    Ok(())
}
