//! Why a packet got its verdict. The numeric values index the counters map and are part of
//! the pinned-map layout: never renumber, only append.

/// Reason codes, one counter slot each per rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Reason {
    /// Judged and passed (or not tracked by any rule).
    Pass = 0,
    /// Source is on the allow list: never limited.
    Allow = 1,
    /// Source is on the deny list: dropped.
    Deny = 2,
    /// Source is banned (escalation / manual ban).
    Ban = 3,
    /// Over the rule's `connections` limit: dropped.
    ConnLimit = 4,
    /// Over the rule's `packets` limit: dropped.
    PktLimit = 5,
    /// Would have been dropped, passed because of `monitor` mode.
    WouldDrop = 6,
    /// Truncated or malformed frame: passed (fail open) and counted.
    Malformed = 7,
    /// Would have been dropped by a ban, passed because the ban was issued in `monitor` mode.
    WouldBan = 8,
    /// A connection attempt from an unverified source over the rule's `unverified` budget:
    /// dropped.
    UnverifiedLimit = 9,
    /// A fragment that could hide a transport header (RFC 1858, RFC 7112): a first fragment
    /// too short for its TCP/UDP/ICMP header, a TCP fragment at offset 1, an IPv6 first
    /// fragment whose header chain does not reach the transport header: dropped.
    BadFragment = 10,
    /// Headers past what the parser follows (a third VLAN tag, more than 8 IPv6 extension
    /// headers): the kernel would still deliver what they hide, unjudged: dropped.
    HiddenHeader = 11,
    /// A TCP connection attempt over the rule's `connections` or `packets` limit, answered
    /// with a RST from XDP (`over_limit = "reset"`) so that the client fails at once instead
    /// of retransmitting its SYN: not delivered.
    Reset = 12,
    /// A connection attempt from an unverified source over the `unverified` budget of a
    /// `challenge = "syncookie"` rule: answered by XDP with a SYN-ACK carrying a SYN cookie
    /// (XDP_TX); the SYN itself never reaches the kernel.
    SynCookie = 13,
    /// A bare ACK from an unverified source to a `syncookie` rule that matches no socket and
    /// carries no valid SYN cookie: dropped.
    BadCookie = 14,
}

/// Counter slots reserved per rule. Larger than the number of reasons so that reasons can be
/// appended without changing the counters map layout.
pub const REASON_SLOTS: u32 = 16;

impl Reason {
    pub const ALL: [Reason; 15] = [
        Reason::Pass,
        Reason::Allow,
        Reason::Deny,
        Reason::Ban,
        Reason::ConnLimit,
        Reason::PktLimit,
        Reason::WouldDrop,
        Reason::Malformed,
        Reason::WouldBan,
        Reason::UnverifiedLimit,
        Reason::BadFragment,
        Reason::HiddenHeader,
        Reason::Reset,
        Reason::SynCookie,
        Reason::BadCookie,
    ];

    /// The name used in `shield stats`, its JSON output and the docs.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Pass => "pass",
            Reason::Allow => "allow",
            Reason::Deny => "deny",
            Reason::Ban => "ban",
            Reason::ConnLimit => "conn_limit",
            Reason::PktLimit => "pkt_limit",
            Reason::WouldDrop => "would_drop",
            Reason::Malformed => "malformed",
            Reason::WouldBan => "would_ban",
            Reason::UnverifiedLimit => "unverified_limit",
            Reason::BadFragment => "bad_fragment",
            Reason::HiddenHeader => "hidden_header",
            Reason::Reset => "reset",
            Reason::SynCookie => "syncookie",
            Reason::BadCookie => "bad_cookie",
        }
    }

    /// The reason for a numeric code (events carry codes).
    pub fn from_code(code: u32) -> Option<Reason> {
        Reason::ALL.get(code as usize).copied()
    }

    /// Whether packets counted under this reason were dropped by the data path.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::Deny
                | Reason::Ban
                | Reason::ConnLimit
                | Reason::PktLimit
                | Reason::UnverifiedLimit
                | Reason::BadFragment
                | Reason::HiddenHeader
                | Reason::Reset
                | Reason::BadCookie
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_values_fit_slots_and_are_dense() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "Reason::ALL must be in numeric order");
            assert!((*r as u32) < REASON_SLOTS);
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.dedup();
        assert_eq!(
            names.len(),
            Reason::ALL.len(),
            "reason names must be unique"
        );
    }
}
