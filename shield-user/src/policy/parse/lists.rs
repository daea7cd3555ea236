//! `[lists]`: allow and deny lists of addresses and CIDRs.

use std::{collections::HashSet, net::IpAddr};

use super::{Ctx, Field};
use crate::policy::{Cidr, PolicyError, value::quote};
use shield_common::MAX_LIST_PREFIXES;

pub(super) fn cidrs(
    cx: &Ctx,
    items: Option<&Field<Vec<Field<String>>>>,
    list: &str,
) -> Result<Vec<Cidr>, PolicyError> {
    let items: &[Field<String>] = match items {
        Some(items) => {
            cx.get(
                items,
                list,
                "a list like [\"192.0.2.0/24\", \"2001:db8::/32\"]",
            )?
            .value
        }
        None => &[],
    };
    if items.len() > MAX_LIST_PREFIXES as usize {
        return Err(cx.err(
            items[MAX_LIST_PREFIXES as usize].span(),
            format!("the {list} list holds at most {MAX_LIST_PREFIXES} prefixes"),
        ));
    }
    let mut seen = HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    const CIDR: &str = "an address or CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\"";
    for item in items {
        let item = cx.get(item, &format!("each entry of the {list} list"), CIDR)?;
        let c = parse_cidr(item.get_ref()).map_err(|why| {
            cx.err(
                item.span(),
                format!(
                    "{list} list: {why}: expected {CIDR}, got {}",
                    quote(item.get_ref())
                ),
            )
        })?;
        if seen.insert(c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Parses `addr` or `addr/len` with host bits clear.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().map_err(|_| "not an IP address".to_string())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        // Digits only, no leading zero: `/08` (octal to some tools) and `/+8` are refused.
        Some(l) => Some(l)
            .filter(|l| l.bytes().all(|b| b.is_ascii_digit()) && (l == &"0" || !l.starts_with('0')))
            .and_then(|l| l.parse::<u8>().ok())
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length must be 0 to {max} (digits, no leading zero)"))?,
        None => max,
    };
    let masked = mask_ip(addr, len);
    if masked != addr {
        return Err(format!("host bits are set (did you mean {masked}/{len}?)"));
    }
    // IPv4-mapped IPv6 (::ffff:a.b.c.d) never reaches XDP as such: IPv4 traffic arrives as
    // IPv4. A list entry or a ban there would match nothing.
    if let IpAddr::V6(a) = addr
        && len >= 96
        && a.to_ipv4_mapped().is_some()
    {
        let v4 = a
            .to_ipv4_mapped()
            .map(|v| v.to_string())
            .unwrap_or_default();
        return Err(format!(
            "an IPv4-mapped IPv6 address never matches (IPv4 traffic arrives as IPv4): write it as IPv4, {v4}/{}",
            len - 96
        ));
    }
    Ok(Cidr { addr, len })
}

fn mask_ip(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}
