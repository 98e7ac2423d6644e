//! What each packet does to its connection: TCP's states with liberal window tracking (as
//! Linux's `nf_conntrack_tcp_be_liberal`: sequence numbers are not checked, flags and
//! their order are), UDP and ICMP echo by time, and how long each state lives.
//!
//! Each packet moves its connection once: at the first port with groups it crosses (see
//! [`crate::firewall::check`]'s `track`).
//!
//! A TCP connection starts with a SYN alone: any other segment of a connection the table
//! does not hold is invalid (no mid-stream pick-up: a connection opened before its port
//! had groups is cut once they come). Flag combinations no TCP sends (SYN with FIN or RST,
//! no flag at all, FIN without ACK) are invalid in any state.

/// TCP flags.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}
use flags::{ACK, FIN, RST, SYN};

/// A TCP connection's state, as the tracker sees both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TcpState {
    /// The opener's SYN seen.
    SynSent = 1,
    /// The answer's SYN-ACK seen.
    SynRecv = 2,
    Established = 3,
    /// The opener sent FIN (the other end not yet).
    FinOpener = 4,
    /// The other end sent FIN (the opener not yet).
    FinResponder = 5,
    /// Both sides sent FIN.
    TimeWait = 6,
    /// A RST: the connection is over, its entry lingers briefly.
    Close = 7,
}

impl TcpState {
    fn from_u8(v: u8) -> Option<TcpState> {
        Some(match v {
            1 => TcpState::SynSent,
            2 => TcpState::SynRecv,
            3 => TcpState::Established,
            4 => TcpState::FinOpener,
            5 => TcpState::FinResponder,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            _ => return None,
        })
    }

    /// Seconds the state lives without a packet (Linux's defaults).
    pub fn timeout(self) -> u32 {
        match self {
            TcpState::SynSent => 120,
            TcpState::SynRecv => 60,
            TcpState::Established => 5 * 24 * 3600,
            TcpState::FinOpener | TcpState::FinResponder => 120,
            TcpState::TimeWait => 120,
            TcpState::Close => 10,
        }
    }
}

/// Seconds a UDP flow lives: one way, and once the other end answered.
pub const UDP_TIMEOUT: u32 = 30;
pub const UDP_STREAM_TIMEOUT: u32 = 120;
/// Seconds an ICMP echo lives.
pub const ICMP_TIMEOUT: u32 = 30;

/// The tracker's word in a table entry: TCP state in the low byte, whether the reply
/// direction was seen in bit 8.
pub fn pack(tcp: Option<TcpState>, replied: bool) -> u32 {
    u32::from(tcp.map_or(0, |s| s as u8)) | u32::from(replied) << 8
}

/// The TCP state and replied flag of a word [`pack`] made.
pub fn unpack(word: u32) -> (Option<TcpState>, bool) {
    (TcpState::from_u8(word as u8), word & 1 << 8 != 0)
}

/// Why a packet cannot go with its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// Whether `f` is a combination of flags a TCP sends.
fn sane(f: u8) -> bool {
    let f = f & (FIN | SYN | RST | ACK);
    f != 0 && !(f & SYN != 0 && f & (FIN | RST) != 0) && !(f & FIN != 0 && f & ACK == 0)
}

/// The state a TCP segment with flags `f` opens a connection in, if it may open one.
pub fn tcp_open(f: u8) -> Result<TcpState, Invalid> {
    if sane(f) && f & (SYN | ACK) == SYN {
        Ok(TcpState::SynSent)
    } else {
        Err(Invalid)
    }
}

/// The state after a segment with flags `f` of a connection in `state`, sent by the
/// connection's opener (`reply` false) or the other end.
pub fn tcp_next(state: TcpState, f: u8, reply: bool) -> Result<TcpState, Invalid> {
    use TcpState::*;
    if !sane(f) {
        return Err(Invalid);
    }
    if f & RST != 0 {
        return Ok(Close);
    }
    let syn = f & SYN != 0;
    let ack = f & ACK != 0;
    let fin = f & FIN != 0;
    Ok(match state {
        // The opener retransmits its SYN; the other end answers SYN-ACK.
        SynSent if !reply && syn && !ack => SynSent,
        SynSent if reply && syn && ack => SynRecv,
        // A SYN answered... by anything else: not a handshake.
        SynSent => return Err(Invalid),
        SynRecv if reply && syn && ack => SynRecv,
        SynRecv if !reply && ack && !syn => {
            if fin {
                FinOpener
            } else {
                Established
            }
        }
        SynRecv => return Err(Invalid),
        // A new SYN in a connection under way (a reused tuple) is the tracker's to refuse:
        // the old entry must expire or be reset first.
        Established | FinOpener | FinResponder | TimeWait if syn => return Err(Invalid),
        Established if fin && reply => FinResponder,
        Established if fin => FinOpener,
        Established => Established,
        // The other side's FIN ends it; the same side's again (a retransmission) does not.
        FinOpener if fin && reply => TimeWait,
        FinResponder if fin && !reply => TimeWait,
        s @ (FinOpener | FinResponder) => s,
        TimeWait => TimeWait,
        // After a RST, only more RSTs (caught above) or the last ACKs in flight.
        Close if ack && !syn => Close,
        Close => return Err(Invalid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;

    #[test]
    fn a_handshake_data_and_a_close_go_through_every_state() {
        let s = tcp_open(SYN).unwrap();
        assert_eq!(s, SynSent);
        let s = tcp_next(s, SYN | ACK, true).unwrap();
        assert_eq!(s, SynRecv);
        let s = tcp_next(s, ACK, false).unwrap();
        assert_eq!(s, Established);
        let s = tcp_next(s, ACK | 0x08, true).unwrap(); // PSH
        assert_eq!(s, Established);
        let s = tcp_next(s, FIN | ACK, false).unwrap();
        assert_eq!(s, FinOpener);
        let s = tcp_next(s, ACK, true).unwrap();
        assert_eq!(s, FinOpener);
        // The opener's FIN again (retransmitted): still waiting for the other's.
        assert_eq!(tcp_next(s, FIN | ACK, false), Ok(FinOpener));
        let s = tcp_next(s, FIN | ACK, true).unwrap();
        assert_eq!(s, TimeWait);
        // The other end may close first.
        assert_eq!(tcp_next(Established, FIN | ACK, true), Ok(FinResponder));
        assert_eq!(tcp_next(FinResponder, FIN | ACK, false), Ok(TimeWait));
        assert_eq!(tcp_next(s, ACK, false), Ok(TimeWait));
        assert!(Established.timeout() > SynSent.timeout());
    }

    #[test]
    fn only_a_syn_opens_and_flag_garbage_is_invalid_everywhere() {
        for f in [ACK, SYN | ACK, FIN | ACK, RST, 0, SYN | FIN, SYN | RST] {
            assert_eq!(tcp_open(f), Err(Invalid), "flags {f:#x}");
        }
        for state in [
            SynSent,
            SynRecv,
            Established,
            FinOpener,
            FinResponder,
            TimeWait,
            Close,
        ] {
            for f in [0, SYN | FIN, SYN | RST, FIN] {
                assert_eq!(tcp_next(state, f, false), Err(Invalid), "{state:?} {f:#x}");
            }
        }
    }

    #[test]
    fn out_of_order_handshakes_and_reused_tuples_are_invalid_and_rst_closes() {
        // The opener answering itself, data before the SYN-ACK, a second SYN mid-stream.
        assert_eq!(tcp_next(SynSent, SYN | ACK, false), Err(Invalid));
        assert_eq!(tcp_next(SynSent, ACK, false), Err(Invalid));
        assert_eq!(tcp_next(SynRecv, ACK, true), Err(Invalid));
        assert_eq!(tcp_next(Established, SYN, false), Err(Invalid));
        // A retransmitted SYN or SYN-ACK is fine.
        assert_eq!(tcp_next(SynSent, SYN, false), Ok(SynSent));
        assert_eq!(tcp_next(SynRecv, SYN | ACK, true), Ok(SynRecv));
        // A RST from either end, in any state, closes.
        for state in [
            SynSent,
            SynRecv,
            Established,
            FinOpener,
            FinResponder,
            TimeWait,
            Close,
        ] {
            assert_eq!(tcp_next(state, RST | ACK, true), Ok(Close));
        }
        assert_eq!(tcp_next(Close, SYN, false), Err(Invalid));
        assert_eq!(tcp_next(Close, ACK, false), Ok(Close));
    }

    #[test]
    fn the_trackers_word_packs_and_unpacks() {
        for s in [None, Some(SynSent), Some(Established), Some(Close)] {
            for replied in [false, true] {
                assert_eq!(unpack(pack(s, replied)), (s, replied));
            }
        }
    }
}
